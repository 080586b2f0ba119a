"""The one engine that sends what the hub owes member services: profile deliveries
(``sync.deliver``) and notices (``sync.notices``) alike.

An :class:`Engine` runs one *kind* of row (a :class:`Kind`: the table's claim, its rows'
recording). It claims due rows by leasing them (pushing their ``next_attempt_at`` a lease
ahead, on Postgres under ``FOR UPDATE SKIP LOCKED``, so several workers never claim the same
row), sends them concurrently within per-service caps, and records the outcomes in batches, as
:mod:`sync.outcomes` decides them. Both engines of a worker share one :class:`Sender` (its HTTP
session and its one Kafka producer for services' topics) and one
:class:`sync.endpoints.Endpoints` registry (a 410 to either closes the webhook to both).

Where the kinds differ, the :class:`Kind` says so in a named attribute, with its reason:

- ``due_after_recording``: notices are ordered per (service, person, channel), so recording one
  makes the next one of its key claimable: the claims look again at once. Deliveries are state,
  coalesced per (service, person, channel): recording one makes nothing else due, except a row
  superseded while in flight, which the fan-out reports (:meth:`Engine.start`).
- The claims themselves (``Kind.claim``): deliveries are taken in order of due time, several
  per service up to its room; notices only when the oldest pending of their key.

Outcomes count toward the webhook's state whatever the kind (see :mod:`sync.outcomes`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity import rollups
from identity.db import dialect
from identity.db.engine import autocommit, plan_for_now
from identity.db.models import ACTIVE, PENDING, Delivery, Notice, Service, SsfStream, utcnow
from identity.db.units import whole
from identity.deliveries import resume
from identity.logs import REQUEST_ID
from identity.settings import Settings
from sync import scim, ssf, webhooks
from sync.backoff import Backoff
from sync.endpoints import Endpoint, Endpoints, Room
from sync.metrics import SyncMetrics
from sync.outcomes import DEAD, GONE, SETTLE, Decision, decide, quarantine_probe
from sync.service_topics import ServiceTopics

if TYPE_CHECKING:
    from sync.fanout import Taken

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.02
POLL_SECONDS = 0.25

#: Per endpoint channel kept on the service's row (the webhook, the SCIM server), the columns of
#: its health: failing since, quarantined at, last error. (A push stream's are on its own row.)
_HEALTH = {
    "webhook": ("webhook_failing_since", "webhook_quarantined_at", "webhook_last_error"),
    "scim": ("scim_failing_since", "scim_quarantined_at", "scim_last_error"),
}
_NAMES = {"webhook": "webhook", "scim": "SCIM server"}


class Job(Protocol):
    """What the engine needs of a row it sends."""

    @property
    def service_id(self) -> int: ...
    @property
    def channel(self) -> str: ...
    @property
    def key(self) -> str: ...  # the topic message's key
    @property
    def body(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def failing_since(self) -> dt.datetime | None: ...
    @property
    def request_id(self) -> str | None: ...  # of the request that caused it: X-Request-Id


@dataclass(frozen=True)
class Result:
    job: Any
    outcome: webhooks.Outcome
    at: dt.datetime
    #: When what the job carries began to wait (a change's commit, a notice's writing).
    since: dt.datetime | None = None

    @property
    def delay(self) -> float | None:
        """Seconds from ``since`` to the answer."""
        return max(0.0, (self.at - self.since).total_seconds()) if self.since is not None else None

    @property
    def delay_ms(self) -> int | None:
        delay = self.delay
        return round(delay * 1000) if delay is not None else None


class Kind(Protocol):
    """One table of rows to send (see the module's docstring for where kinds differ)."""

    name: str  # in logs
    claim_batch: int
    due_after_recording: bool

    async def claim(
        self, db: AsyncSession, limit: int, now: dt.datetime, endpoints: Endpoints, inflight: Mapping[tuple[int, str], int]
    ) -> list[Any]:
        """Lease up to ``limit`` due rows in ``db`` and return their jobs."""
        ...

    async def any_due(self, db: AsyncSession, now: dt.datetime) -> bool:
        """Whether a row may be due at ``now``: one indexed read, before a poll opens a claim's
        transaction (a claim may still find none it can take)."""
        ...

    def lock_order(self, job: Any) -> tuple[Any, ...]:
        """Outcomes are recorded in this order (the order others lock the same rows in)."""
        ...

    def since(self, job: Any) -> dt.datetime | None:
        """When what ``job`` carries began to wait: its latency is counted from there."""
        ...

    async def settle(self, db: AsyncSession, settled: list[tuple[Result, Decision]]) -> None: ...

    async def record(self, db: AsyncSession, result: Result, decision: Decision) -> bool:
        """Record a decision other than settle on the row; whether the row took it (a late
        outcome, of an attempt whose lease ran out while another was recorded, is dropped)."""
        ...

    def count(self, metrics: SyncMetrics, channel: str, result: str) -> None: ...

    def observe(self, metrics: SyncMetrics, results: list[Result]) -> None:
        """Outcomes recorded (committed)."""
        ...

    async def jobs_for(self, db: AsyncSession, endpoints: Endpoints, taken: Taken) -> list[Any]:
        """Jobs for rows the fan-out leased to this worker as it recorded them."""
        ...


class Sender:
    """The channels of one worker: its HTTP session for webhooks, SCIM servers and Shared Signals
    pushes, its one producer for services' own topics (``None`` without Kafka), and what signs SETs."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession, topics: ServiceTopics | None, sets: ssf.SetSigner | None = None) -> None:
        self.http = http
        self.topics = topics
        self.sets = sets
        self.timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout)
        self.scim_tokens = scim.Tokens()  # from services' OAuth token endpoints

    async def send(self, endpoint: Endpoint | None, job: Job) -> webhooks.Outcome:
        if endpoint is None:
            return webhooks.Outcome("retry", "the service has no delivery channel")
        if job.channel == "webhook":
            if endpoint.webhook_url is None or endpoint.signer is None:
                return webhooks.Outcome("retry", "the service has no webhook now")
            return await webhooks.post(
                self.http, endpoint.webhook_url, endpoint.signer, job.message_id, job.body, timeout=self.timeout,
                request_id=job.request_id,
            )
        if job.channel == "scim":
            if endpoint.scim_base_url is None or endpoint.scim_token is None:
                return webhooks.Outcome("retry", "the service has no SCIM server now")
            token = await scim.bearer(
                self.scim_tokens, self.http, endpoint.service_id, endpoint.scim_token_url, endpoint.scim_client_id,
                endpoint.scim_token, timeout=self.timeout,
            )
            if isinstance(token, webhooks.Outcome):
                return token
            outcome = await scim.send(self.http, endpoint.scim_base_url, token, job.body, timeout=self.timeout)
            if outcome.status == 401:
                self.scim_tokens.forget(endpoint.service_id)
            return outcome
        if job.channel == "ssf":
            if not endpoint.ssf_open or endpoint.ssf_url is None:
                return webhooks.Outcome("retry", "the service has no push stream now")
            if self.sets is None:
                return webhooks.Outcome("retry", "this worker cannot sign Security Event Tokens")
            token = await self.sets.sign(job.body)
            return await ssf.post(self.http, endpoint.ssf_url, endpoint.ssf_authorization, token, timeout=self.timeout)
        if not endpoint.topic_enabled:
            return webhooks.Outcome("retry", "the service has no topic now")
        if self.topics is None:
            return webhooks.Outcome("retry", "Kafka is not configured")
        return await self.topics.publish(endpoint.client_id, job.key, job.body, job.message_id, request_id=job.request_id)

    async def watch_topics_forever(self, endpoints: Endpoints) -> None:
        """Every few seconds, the services' topics are checked on the broker (a broker that
        came back empty, a topic made with another partition count)."""
        if self.topics is None:
            return
        while True:
            await asyncio.sleep(self.topics.interval())
            try:
                await self.topics.watch(ep.client_id for ep in endpoints.by_id.values() if ep.topic_enabled)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sync: checking the services' topics: %s: %s", type(exc).__name__, exc)

    async def close(self) -> None:
        if self.topics is not None:
            await self.topics.close()


class Engine:
    def __init__(
        self,
        kind: Kind,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        endpoints: Endpoints,
        sender: Sender,
        *,
        metrics: SyncMetrics,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.kind = kind
        self.settings = settings
        self.sessions = sessions
        self.endpoints = endpoints
        self.sender = sender
        self.metrics = metrics
        self.wake = wake or asyncio.Event()
        self.inflight: dict[tuple[int, str], int] = defaultdict(int)
        self.total_inflight = 0
        self.slot_free = asyncio.Event()
        self.results: list[Result] = []
        self.results_ready = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting = False  # takes rows from the fan-out while it runs
        self.recheck = False  # a row in flight was superseded: look for due rows after recording

    # -- rows taken as the fan-out records them ---------------------------------------------

    def room(self) -> Room | None:
        """What the fan-out may lease to this engine as it records rows: within the worker's
        cap (``sync_concurrency``) less what is in flight; ``None`` when it is not running."""
        budget = self.settings.sync_concurrency - self.total_inflight
        if not self.accepting or budget <= 0:
            return None
        return self.endpoints.room(self.inflight, budget, utcnow() + dt.timedelta(seconds=self.settings.sync_lease))

    async def jobs_for(self, db: AsyncSession, taken: Taken) -> list[Any]:
        """The jobs for rows leased to this worker, built in the transaction that leased them."""
        return await self.kind.jobs_for(db, self.endpoints, taken) if taken.rows else []

    def start(self, jobs: list[Any], *, superseded: int = 0) -> None:
        """Send ``jobs`` (once the transaction that leased them has committed). ``superseded``:
        rows in flight that the same transaction made due again, claimed once recorded."""
        for job in jobs:
            self._start(job)
        if superseded:
            self.recheck = True

    # -- the loops ----------------------------------------------------------------------------

    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_forever(), name=f"sync-{self.kind.name}-results")
        self.accepting = True
        try:
            await self._claim_forever()
        finally:
            self.accepting = False
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:
                await self.flush()  # outcomes already known are recorded, not retried
            except Exception as exc:
                # They keep their lease and are sent again when it runs out: at least once.
                log.warning("sync %s: could not record the last outcomes: %s: %s", self.kind.name, type(exc).__name__, exc)

    async def _claim_forever(self) -> None:
        backoff = Backoff()
        # After a poll's wait ran out (nothing woke the engine), one read looks for due rows
        # before a claim's transaction is opened: an idle engine costs a statement a poll, not
        # a transaction. A wake-up (rows were left due) claims at once.
        polled = False
        while True:
            try:
                if self.total_inflight >= self.settings.sync_concurrency:
                    self.slot_free.clear()
                    await self.slot_free.wait()
                    continue
                await self.endpoints.refresh()
                # Cleared before looking, so a wake-up during the claim is not lost.
                self.wake.clear()
                jobs = await whole(self.claim(min(self.kind.claim_batch, self.settings.sync_concurrency - self.total_inflight), probe=polled))
                backoff.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.failed()
                log.warning("sync %s: %s: %s; retrying in %.1f s", self.kind.name, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            for job in jobs:
                self._start(job)
            polled = False
            if not jobs:
                # asyncio.timeout, not wait_for, which on Python 3.11 can swallow a
                # cancellation arriving as the wake-up does (CPython gh-86296).
                try:
                    async with asyncio.timeout(POLL_SECONDS):
                        await self.wake.wait()
                except TimeoutError:
                    polled = True

    async def claim(self, limit: int, *, probe: bool = False) -> list[Any]:
        """Lease up to ``limit`` due rows (their next attempt moves a lease ahead). ``probe``:
        first look, outside a transaction, whether any row is due at all."""
        if limit <= 0:
            return []
        if probe:
            async with autocommit(self.sessions) as db:
                if not await self.kind.any_due(db, utcnow()):
                    return []
        async with self.sessions.begin() as db:
            await plan_for_now(db)
            await db.connection()
            now = utcnow()  # the lease runs from here, not from before a wait for a connection
            return await self.kind.claim(db, limit, now, self.endpoints, self.inflight)

    def _start(self, job: Any) -> None:
        key = (job.service_id, job.channel)
        self.inflight[key] += 1
        self.total_inflight += 1
        task = asyncio.create_task(self.send(job))
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.inflight[key] -= 1
            self.total_inflight -= 1
            self.slot_free.set()

        task.add_done_callback(done)

    async def _flush_forever(self) -> None:
        while True:
            await self.results_ready.wait()
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await whole(self.flush())
                if self.recheck or self.kind.due_after_recording:
                    # Rows recorded may have left others due: claim them now.
                    self.recheck = False
                    self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The rows keep their lease; they are tried again when it runs out.
                log.warning("sync %s: could not record outcomes: %s: %s", self.kind.name, type(exc).__name__, exc)
                await asyncio.sleep(1)

    # -- sending --------------------------------------------------------------------------

    async def send(self, job: Any) -> None:
        """Send one job and keep its outcome for the next recording. Log lines written meanwhile
        carry the id of the request that caused it."""
        token = REQUEST_ID.set(job.request_id)
        try:
            outcome = await self.sender.send(self.endpoints.get(job.service_id), job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Whatever went wrong is recorded and retried on the schedule, never lost silently.
            log.warning("sync %s: sending to service %s failed: %s: %s", self.kind.name, job.service_id, type(exc).__name__, exc)
            outcome = webhooks.Outcome("retry", f"could not send: {type(exc).__name__}")
        finally:
            REQUEST_ID.reset(token)
        self.kind.count(self.metrics, job.channel, outcome.result)
        if outcome.result == "gone":
            self.endpoints.gone(job.service_id)
        self.results.append(Result(job, outcome, utcnow(), self.kind.since(job)))
        self.results_ready.set()

    # -- recording ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Record the outcomes kept so far, in one transaction."""
        self.results_ready.clear()
        results, self.results = self.results, []
        if not results:
            return
        try:
            async with self.sessions.begin() as db:
                await plan_for_now(db)
                await self.record(db, results)
        except BaseException:
            self.results[:0] = results
            self.results_ready.set()
            raise
        self.endpoints.gone_recorded({r.job.service_id for r in results if r.outcome.result == "gone"})
        self.kind.observe(self.metrics, results)

    async def record(self, db: AsyncSession, results: list[Result]) -> None:
        """Record ``results`` in the caller's transaction: each row as the outcome policy
        decides, then what it means for each webhook, and the counts in the per-minute rollups."""
        # Rows are locked in the kind's order (the fan-out's, for deliveries): no deadlock.
        decided = [
            (r, decide(r.outcome, attempts=r.job.attempts, failing_since=r.job.failing_since, now=r.at, channel=r.job.channel, settings=self.settings))
            for r in sorted(results, key=lambda r: self.kind.lock_order(r.job))
        ]
        tally = rollups.Tally()
        settled = [(r, d) for r, d in decided if d.action == SETTLE]
        if settled:
            await self.kind.settle(db, settled)
            for channel in ("webhook", "scim"):
                await self._recover(db, channel, sorted({r.job.service_id for r, d in settled if d.endpoint == "recover" and r.job.channel == channel}))
            await self._recover_streams(db, sorted({r.job.service_id for r, d in settled if d.endpoint == "recover" and r.job.channel == "ssf"}))
            for r, _ in settled:
                tally.ok(r.job.service_id, r.at, r.delay)
        for r, d in decided:
            if d.action == SETTLE:
                continue
            if d.action == GONE:
                await _disable(db, r.job.service_id, r.at, d.error)
            took = await self.kind.record(db, r, d)
            tally.failed(r.job.service_id, r.at, dead=took and d.action == DEAD)
            if took and d.endpoint == "failing":
                if r.job.channel == "ssf":
                    await self._stream_failing(db, r.job.service_id, r.at, d.error)
                else:
                    await self._failing(db, r.job.channel, r.job.service_id, r.at, d.error)
        # Last, in (minute, service) order: no other writer of these rows waits on what this holds.
        await rollups.add(db, tally)

    async def _recover(self, db: AsyncSession, channel: str, healthy: list[int]) -> None:
        """Endpoints (webhooks, or SCIM servers: ``channel``) that accepted something are
        healthy: out of failing and quarantine, and their backlog (deliveries and notices) due
        at once."""
        if not healthy:
            return
        recovered = (await db.execute(_recovering(dialect.name(db), channel), {"ids": healthy})).scalars().all()
        if recovered:
            await resume(db, list(recovered), channel)
            log.info("sync: the %s of service(s) %s recovered", _NAMES[channel], sorted(recovered))
            self.endpoints.stale()

    async def _failing(self, db: AsyncSession, channel: str, service_id: int, now: dt.datetime, error: str | None) -> None:
        """An endpoint (``channel``: the webhook or the SCIM server) failed at ``now``: failing
        from then on (if not already), and quarantined once it has failed for
        ``sync_quarantine_after``."""
        failing, quarantined, last_error = _HEALTH[channel]
        s = Service.__table__.c
        await db.execute(
            update(Service.__table__)
            .where(s.id == service_id)
            .values({failing: func.coalesce(s[failing], now), last_error: error})
        )
        failing_since = await db.scalar(select(s[failing]).where(s.id == service_id))
        probe = quarantine_probe(failing_since, now, self.settings)
        if probe is None:
            return
        held = await db.execute(
            update(Service.__table__).where(s.id == service_id, s[quarantined].is_(None)).values({quarantined: now})
        )
        if held.rowcount:
            log.warning("sync: the %s of service %s has failed since %s and is quarantined", _NAMES[channel], service_id, failing_since)
            self.endpoints.stale()
        await _hold(db, channel, service_id, probe)


    # A Shared Signals push stream's endpoint has the same health as a webhook, on its own row.

    async def _recover_streams(self, db: AsyncSession, healthy: list[int]) -> None:
        """Push streams that accepted a SET are healthy: their waiting SETs are due at once, with
        fresh retry clocks (as ``identity.deliveries.resume`` does for a webhook's backlog)."""
        if not healthy:
            return
        t = SsfStream.__table__.c
        recovered = (
            await db.execute(
                update(SsfStream.__table__)
                .where(t.service_id.in_(healthy), or_(t.failing_since.is_not(None), t.quarantined_at.is_not(None)))
                .values(failing_since=None, quarantined_at=None, last_error=None)
                .returning(t.service_id)
            )
        ).scalars().all()
        if recovered:
            n = Notice.__table__.c
            await db.execute(
                update(Notice.__table__)
                .where(n.service_id.in_(list(recovered)), n.channel == "ssf", n.state == PENDING, n.attempts > 0)
                .values(attempts=0, failing_since=None, next_attempt_at=utcnow())
            )
            log.info("sync: the Shared Signals stream(s) of service(s) %s recovered", sorted(recovered))
            self.endpoints.stale()

    async def _stream_failing(self, db: AsyncSession, service_id: int, now: dt.datetime, error: str | None) -> None:
        t = SsfStream.__table__.c
        await db.execute(
            update(SsfStream.__table__)
            .where(t.service_id == service_id)
            .values(failing_since=func.coalesce(t.failing_since, now), last_error=error)
        )
        failing_since = await db.scalar(select(t.failing_since).where(t.service_id == service_id))
        probe = quarantine_probe(failing_since, now, self.settings)
        if probe is None:
            return
        quarantined = await db.execute(
            update(SsfStream.__table__).where(t.service_id == service_id, t.quarantined_at.is_(None)).values(quarantined_at=now)
        )
        if quarantined.rowcount:
            log.warning("sync: the Shared Signals stream of service %s has failed since %s and is quarantined", service_id, failing_since)
            self.endpoints.stale()
        n = Notice.__table__.c
        await db.execute(
            update(Notice.__table__)
            .where(n.service_id == service_id, n.channel == "ssf", n.state == PENDING, n.next_attempt_at < probe)
            .values(next_attempt_at=probe)
        )


@functools.cache
def _recovering(dialect_name: str, channel: str) -> Any:
    """The services ``ids`` whose ``channel`` endpoint was failing or quarantined, out of it."""
    failing, quarantined, last_error = _HEALTH[channel]
    s = Service.__table__.c
    return (
        update(Service.__table__)
        .where(dialect.among(dialect_name, s.id, "ids"), or_(s[failing].is_not(None), s[quarantined].is_not(None)))
        .values({failing: None, quarantined: None, last_error: None})
        .returning(s.id)
    )


async def _disable(db: AsyncSession, service_id: int, now: dt.datetime, error: str | None) -> None:
    s = Service.__table__.c
    await db.execute(update(Service.__table__).where(s.id == service_id).values(webhook_disabled_at=now, webhook_last_error=error))
    log.warning("sync: the webhook of service %s answered 410 Gone and is disabled", service_id)


async def _hold(db: AsyncSession, channel: str, service_id: int, until: dt.datetime) -> None:
    """Slowed: nothing more to a quarantined endpoint before its next probe, deliveries and
    notices alike (``identity.deliveries.resume`` makes them due again when it recovers)."""
    d = Delivery.__table__.c
    await db.execute(
        update(Delivery.__table__)
        .where(d.service_id == service_id, d.channel == channel, d.state == ACTIVE, d.next_attempt_at < until)
        .values(next_attempt_at=until)
    )
    n = Notice.__table__.c
    await db.execute(
        update(Notice.__table__)
        .where(n.service_id == service_id, n.channel == channel, n.state == PENDING, n.next_attempt_at < until)
        .values(next_attempt_at=until)
    )
