"""The deliverer: sends due deliveries to services' webhooks and topics, and records the outcome.

The ``deliveries`` table is the durable retry store. A worker claims due rows (on Postgres with
``FOR UPDATE SKIP LOCKED``, so several workers never claim the same row) by pushing their
``next_attempt_at`` a lease ahead, sends them concurrently, and records outcomes in batches.
Each service has its own in-flight cap, so a slow or failing endpoint never holds up the others;
a failing delivery is retried on the schedule, an endpoint failing for long is quarantined
(one try at a time, every ``sync_quarantine_probe`` seconds) until a delivery succeeds, a 410
disables the endpoint, and a delivery failing for ``sync_give_up_after`` goes to the dead letters.

Every delivery is built from the person's state at the time it is sent: the whole profile the
service may see, at the account's current version."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from sqlalchemy import (
    BigInteger,
    Integer,
    and_,
    bindparam,
    case,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from identity.db.engine import plan_for_now
from identity.db.models import (
    ACTIVE,
    Account,
    DeadLetter,
    Delivery,
    Link,
    Service,
    UTCDateTime,
    utcnow,
)
from identity.db.units import whole
from identity.deliveries import resume
from identity.sealing import KeyCipher, open_webhook_secret
from identity.settings import Settings
from schemas.events import ProfileSnapshot, ProfileUpdated
from sync import projection, webhooks
from sync.metrics import SyncMetrics
from sync.service_topics import ServiceTopics

log = logging.getLogger(__name__)

CLAIM_BATCH = 200
FLUSH_INTERVAL = 0.02
SERVICES_REFRESH = 5.0
_ID_NAMESPACE = uuid.UUID("6f1d2c4e-8b1a-4c55-9a57-0e5b7a1c9d11")


@dataclass(frozen=True)
class Endpoint:
    """A service as the deliverer needs it."""

    service_id: int
    client_id: str
    webhook_url: str | None
    signer: Webhook | None
    topic_enabled: bool
    disabled: bool
    quarantined: bool


def message_id(delivery_id: int, generation: int, version: int) -> str:
    """The same id for every retry of one delivery, a new one for each new request to deliver
    (receivers may deduplicate on it)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{delivery_id}:{generation}:{version}"))


#: What building a delivery needs of an account (plain rows: read by attribute name like the model).
ACCOUNT_COLUMNS = [Account.__table__.c[name] for name in (
    "id", "sub", "status", "version", "updated_at", "email", "email_verified", "name", "given_name", "family_name",
    "birthdate", "locale", "zoneinfo", "phone_number", "address", "marketing_news", "marketing_competitions", "marketing_offers",
)]

#: What sending a delivery needs of its row (claimed, or leased as the fan-out records it).
CLAIMED_COLUMNS = tuple(Delivery.__table__.c[name] for name in (
    "id", "service_id", "account_id", "channel", "changed", "snapshot", "origin", "origin_self",
    "first_pending_at", "failing_since", "attempts", "delivered_at", "generation", "next_attempt_at",
))

UPDATED = ProfileUpdated.model_fields["type"].default
SNAPSHOT = ProfileSnapshot.model_fields["type"].default


def render(kind: str, mid: str, stamp: str, data: dict[str, Any]) -> str:
    """The JSON body of a delivery: ``schemas.events.ProfileUpdated`` or ``ProfileSnapshot``
    (built as plain JSON on this hot path; the tests validate what receivers get against the
    models, and the models are what /schemas/ and /asyncapi.json publish)."""
    return json.dumps({"type": kind, "id": mid, "timestamp": stamp, "data": data}, separators=(",", ":"), ensure_ascii=False)


def _timestamp(now: dt.datetime) -> str:
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def read_accounts(db: AsyncSession, ids: set[int]) -> dict[int, Any]:
    return {a.id: a for a in await db.execute(select(*ACCOUNT_COLUMNS).where(Account.id.in_(ids)))}


async def load_endpoints(db: AsyncSession, cipher: KeyCipher) -> dict[int, Endpoint]:
    rows = (await db.execute(select(Service).where(or_(Service.webhook_url.is_not(None), Service.topic_enabled)))).scalars()
    out = {}
    for s in rows:
        try:
            signer = Webhook(open_webhook_secret(cipher, s.webhook_secret, s.client_id)) if s.webhook_url and s.webhook_secret else None
        except Exception:
            # Sealed under another secret key, say: this service's webhook waits, the others go on.
            log.error("sync: the webhook secret of service %s cannot be read with this hub's secret key", s.client_id)
            signer = None
        out[s.id] = Endpoint(
            service_id=s.id,
            client_id=s.client_id,
            webhook_url=s.webhook_url,
            signer=signer,
            topic_enabled=s.topic_enabled,
            disabled=s.webhook_disabled_at is not None,
            quarantined=s.webhook_quarantined_at is not None,
        )
    return out


@dataclass
class DirectLease:
    """Deliveries a worker takes as its fan-out records them, instead of claiming them after.

    ``room`` is how many more deliveries each (service, channel) may take now, ``budget`` how
    many in all. A row given room is recorded already leased until ``until``; if the recording
    really leased it (a row that was pending keeps its own schedule) it comes back in ``taken``,
    to be sent by this worker once the transaction commits. ``left`` counts rows recorded due but
    not taken (for the deliverer's claims), ``in_flight`` rows superseded while being sent."""

    until: dt.datetime
    room: dict[tuple[int, str], int]
    taken: list[Any] = field(default_factory=list)
    left: int = 0
    in_flight: int = 0
    jobs: list[Any] = field(default_factory=list)  # what ``taken`` became (``Deliverer.prepare``)
    accounts: dict[int, Any] = field(default_factory=dict)  # ACCOUNT_COLUMNS rows the recording read
    scopes: dict[tuple[int, int], str] = field(default_factory=dict)  # active links' scopes it read


@dataclass
class _Job:
    delivery_id: int
    service_id: int
    account_id: int
    channel: str
    sub: str
    version: int
    body: str
    message_id: str
    first_pending_at: dt.datetime | None
    failing_since: dt.datetime | None
    attempts: int
    generation: int


@dataclass
class _Result:
    job: _Job
    outcome: webhooks.Outcome
    at: dt.datetime


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        cipher: KeyCipher,
        http: aiohttp.ClientSession,
        *,
        bootstrap: str | None,
        idempotent: bool,
        metrics: SyncMetrics,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cipher = cipher
        self.http = http
        self.bootstrap = bootstrap
        self.idempotent = idempotent
        self.metrics = metrics
        self.wake = wake or asyncio.Event()
        self.endpoints: dict[int, Endpoint] = {}
        self.timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout)
        self._endpoints_at = -1e9
        self._gone: set[int] = set()  # webhooks that answered 410, until that is committed
        self.inflight: dict[tuple[int, str], int] = defaultdict(int)
        self.total_inflight = 0
        self.slot_free = asyncio.Event()
        self.results: list[_Result] = []
        self.results_ready = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        # Services' own topics (one producer for this worker, shared with its notices).
        self.service_topics = (
            ServiceTopics(settings, sessions, bootstrap, idempotent=idempotent, metrics=metrics) if bootstrap is not None else None
        )
        self.accepting = False  # takes deliveries from the fan-out while it runs
        self.recheck = False  # a delivery in flight was superseded: look for due rows after recording

    # -- taking deliveries as they are recorded --------------------------------------------

    def direct_lease(self) -> DirectLease | None:
        """Room for deliveries the fan-out records to be sent at once by this worker: each open
        endpoint's cap less what it has in flight, within the worker's own cap. Quarantined,
        disabled or unknown endpoints get none (their rows stay for the claims)."""
        budget = self.settings.sync_concurrency - self.total_inflight
        if not self.accepting or budget <= 0:
            return None
        cap = self.settings.sync_service_concurrency
        room: dict[tuple[int, str], int] = {}
        for sid, ep in self.endpoints.items():
            if ep.webhook_url and ep.signer is not None and not ep.disabled and not ep.quarantined:
                room[(sid, "webhook")] = min(budget, cap - self.inflight[(sid, "webhook")])
            if ep.topic_enabled and self.bootstrap is not None:
                room[(sid, "topic")] = min(budget, cap - self.inflight[(sid, "topic")])
        return DirectLease(until=utcnow() + dt.timedelta(seconds=self.settings.sync_lease), room=room)

    async def prepare(self, db: AsyncSession, lease: DirectLease) -> list[_Job]:
        """The jobs for rows leased to this worker, built in the transaction that leased them
        (from the accounts and scopes the recording read)."""
        return await self._build(db, lease.taken, lease.accounts, lease.scopes) if lease.taken else []

    def start(self, jobs: list[_Job]) -> None:
        """Send ``jobs`` (once the transaction that leased them has committed)."""
        for job in jobs:
            self._start(job)

    # -- the loops ------------------------------------------------------------------------

    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_forever(), name="sync-results")
        watcher = asyncio.create_task(self._watch_topics_forever(), name="sync-topics")
        self.accepting = True
        try:
            await self._claim_forever()
        finally:
            self.accepting = False
            watcher.cancel()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            flusher.cancel()
            for task in (flusher, watcher):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            try:
                await self._flush()  # outcomes already known are recorded, not retried
            except Exception as exc:
                # They keep their lease and are sent again when it runs out: at least once.
                log.warning("sync deliverer: could not record the last outcomes: %s: %s", type(exc).__name__, exc)
            if self.service_topics is not None:
                await self.service_topics.close()

    async def _claim_forever(self) -> None:
        backoff = 0.5
        while True:
            try:
                if self.total_inflight >= self.settings.sync_concurrency:
                    self.slot_free.clear()
                    await self.slot_free.wait()
                    continue
                await self._refresh_endpoints()
                # Cleared before looking, so a wake-up during the claim is not lost.
                self.wake.clear()
                jobs = await whole(self.claim(min(CLAIM_BATCH, self.settings.sync_concurrency - self.total_inflight)))
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sync deliverer: %s: %s; retrying in %.1f s", type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            for job in jobs:
                self._start(job)
            if not jobs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.25)

    def _start(self, job: _Job) -> None:
        key = (job.service_id, job.channel)
        self.inflight[key] += 1
        self.total_inflight += 1
        task = asyncio.create_task(self._send(job))
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
                await whole(self._flush())
                if self.recheck:
                    # A delivery superseded in flight stays due after its outcome: claim it now.
                    self.recheck = False
                    self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The rows keep their lease; they are tried again when it runs out.
                log.warning("sync deliverer: could not record outcomes: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1)

    # -- claiming -------------------------------------------------------------------------

    async def _refresh_endpoints(self, force: bool = False) -> None:
        now = asyncio.get_running_loop().time()
        if force or now - self._endpoints_at > SERVICES_REFRESH:
            async with self.sessions() as db:
                self.endpoints = await load_endpoints(db, self.cipher)
            self._endpoints_at = now
            for service_id in self._gone:  # read before the disabling was committed
                self._disable(service_id)

    def webhook_gone(self, service_id: int) -> None:
        """A service's webhook answered 410 (to a delivery or a notice): send it nothing more,
        from now on, not only once the disabling is committed and the endpoints read again."""
        self._gone.add(service_id)
        self._disable(service_id)

    def webhook_gone_recorded(self, service_ids: set[int]) -> None:
        """The disabling of those webhooks is committed: read the endpoints again."""
        if service_ids:
            self._gone -= service_ids
            self._endpoints_at = -1e9

    def _disable(self, service_id: int) -> None:
        endpoint = self.endpoints.get(service_id)
        if endpoint is not None and not endpoint.disabled:
            self.endpoints[service_id] = replace(endpoint, disabled=True)

    def _excluded(self) -> tuple[list[int], list[int]]:
        """Services whose webhook or topic must not be claimed now."""
        cap = self.settings.sync_service_concurrency
        webhook, topic = [], []
        for sid, ep in self.endpoints.items():
            if ep.webhook_url is None or ep.signer is None or ep.disabled or self.inflight[(sid, "webhook")] >= (1 if ep.quarantined else cap):
                webhook.append(sid)
            if not ep.topic_enabled or self.bootstrap is None or self.inflight[(sid, "topic")] >= cap:
                topic.append(sid)
        return webhook, topic

    def _room(self) -> dict[int, int]:
        cap = self.settings.sync_service_concurrency
        room = {}
        for sid, ep in self.endpoints.items():
            busy = max(self.inflight[(sid, "webhook")], self.inflight[(sid, "topic")])
            limit = 1 if ep.quarantined else cap
            if busy or ep.quarantined:
                room[sid] = max(0, limit - busy)
        return room

    async def claim(self, limit: int) -> list[_Job]:
        """Take up to ``limit`` due deliveries (a lease: their next attempt moves ahead)."""
        if limit <= 0:
            return []
        async with self.sessions.begin() as db:
            await plan_for_now(db)
            await db.connection()
            now = utcnow()  # the lease runs from here, not from before a wait for a connection
            no_webhook, no_topic = self._excluded()
            d = Delivery.__table__.c
            due = (
                select(d.id, d.service_id, d.channel, d.next_attempt_at)
                .where(
                    d.state == ACTIVE,
                    d.wanted_version > d.delivered_version,
                    d.next_attempt_at <= now,
                    not_(and_(d.channel == "webhook", d.service_id.in_(no_webhook))),
                    not_(and_(d.channel == "topic", d.service_id.in_(no_topic))),
                )
                .order_by(d.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
                .cte("due")
            )
            ranked = select(
                due.c.id,
                due.c.service_id,
                func.row_number().over(partition_by=(due.c.service_id, due.c.channel), order_by=due.c.next_attempt_at).label("n"),
            ).subquery()
            # What each service may still take: its cap less what is in flight; one at a time while
            # its webhook is quarantined.
            room = self._room()
            cap = case(room, value=ranked.c.service_id, else_=self.settings.sync_service_concurrency) if room else self.settings.sync_service_concurrency
            picked = select(ranked.c.id).where(ranked.c.n <= cap).limit(limit)
            claimed = (
                await db.execute(
                    update(Delivery.__table__)
                    .where(d.id.in_(picked))
                    .values(next_attempt_at=now + dt.timedelta(seconds=self.settings.sync_lease))
                    .returning(*CLAIMED_COLUMNS)
                )
            ).all()
            if not claimed:
                return []
            if any(r.service_id not in self.endpoints for r in claimed):
                # A service registered or changed since the last refresh.
                self.endpoints = await load_endpoints(db, self.cipher)
                self._endpoints_at = asyncio.get_running_loop().time()
            return await self._build(db, claimed)

    async def _build(
        self,
        db: AsyncSession,
        claimed: list[Any],
        accounts: dict[int, Any] | None = None,
        scopes: dict[tuple[int, int], str] | None = None,
    ) -> list[_Job]:
        """Jobs for ``claimed`` rows, from the accounts (``ACCOUNT_COLUMNS`` rows by id) and the
        active links' scopes (by account and service), read here unless the caller has them."""
        if accounts is None:
            accounts = await read_accounts(db, {r.account_id for r in claimed})
        if scopes is None:
            pairs = {(r.account_id, r.service_id) for r in claimed}
            scopes = {
                (a, s): scope
                for a, s, scope in (
                    await db.execute(
                        select(Link.account_id, Link.service_id, Link.scope).where(
                            Link.account_id.in_({a for a, _ in pairs}),
                            Link.service_id.in_({s for _, s in pairs}),
                            Link.status == "active",
                        )
                    )
                )
                if (a, s) in pairs
            }
        stamp = _timestamp(utcnow())
        jobs, dropped = [], []
        profiles: dict[tuple[int, str], dict[str, Any]] = {}  # services granted the same scopes see the same
        for r in claimed:
            account = accounts.get(r.account_id)
            scope = scopes.get((r.account_id, r.service_id))
            endpoint = self.endpoints.get(r.service_id)
            if account is None or scope is None or endpoint is None or account.status not in ("active",):
                dropped.append(r.id)  # unlinked or gone: nothing more is sent
                continue
            profile = profiles.get((r.account_id, scope))
            if profile is None:
                profile = profiles[(r.account_id, scope)] = projection.profile(account, scope)
            mid = message_id(r.id, r.generation, account.version)
            data: dict[str, Any] = {"sub": account.sub, "version": account.version}
            if r.snapshot:
                data |= {"reason": "resync" if r.delivered_at else "linked", "profile": profile}
            else:
                changed = projection.names(r.changed & projection.visible_mask(scope))
                data |= {"changed": changed, "profile": profile, "origin": {"channel": r.origin, "this_service": bool(r.origin_self)}}
            body = render(SNAPSHOT if r.snapshot else UPDATED, mid, stamp, data)
            jobs.append(
                _Job(r.id, r.service_id, r.account_id, r.channel, account.sub, account.version, body, mid, r.first_pending_at, r.failing_since, r.attempts, r.generation)
            )
        if dropped:
            await db.execute(
                update(Delivery.__table__)
                .where(Delivery.__table__.c.id.in_(dropped))
                .values(delivered_version=Delivery.__table__.c.wanted_version, changed=0, snapshot=False)
            )
        return jobs

    # -- sending --------------------------------------------------------------------------

    async def _send(self, job: _Job) -> None:
        endpoint = self.endpoints.get(job.service_id)
        try:
            if endpoint is None:
                outcome = webhooks.Outcome("retry", "the service has no delivery channel")
            elif job.channel == "webhook":
                if endpoint.webhook_url is None or endpoint.signer is None:
                    outcome = webhooks.Outcome("retry", "the service has no webhook now")
                else:
                    outcome = await webhooks.post(
                        self.http, endpoint.webhook_url, endpoint.signer, job.message_id, job.body, timeout=self.timeout
                    )
            else:
                outcome = await self._produce(endpoint, job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Whatever went wrong is recorded and retried on the schedule, never lost silently.
            log.warning("sync: delivery %s to service %s failed: %s: %s", job.delivery_id, job.service_id, type(exc).__name__, exc)
            outcome = webhooks.Outcome("retry", f"could not send: {type(exc).__name__}")
        self.metrics.deliveries.labels(job.channel, outcome.result).inc()
        if outcome.result == "gone":
            self.webhook_gone(job.service_id)
        self.results.append(_Result(job, outcome, utcnow()))
        self.results_ready.set()

    async def _produce(self, endpoint: Endpoint, job: _Job) -> webhooks.Outcome:
        return await self.publish(endpoint.client_id, job.sub, job.body, job.message_id)

    async def publish(self, client_id: str, key: str, body: str, mid: str) -> webhooks.Outcome:
        """Produce ``body`` to the service's own topic, keyed by ``key`` with a ``webhook-id``
        header (see ``sync.service_topics``). Also used for notices."""
        if self.service_topics is None:
            return webhooks.Outcome("retry", "Kafka is not configured")
        return await self.service_topics.publish(client_id, key, body, mid)

    async def _watch_topics_forever(self) -> None:
        """Every few seconds, the services' topics are checked on the broker (a broker that
        came back empty, a topic made with another partition count)."""
        if self.service_topics is None:
            return
        while True:
            await asyncio.sleep(self.service_topics.interval())
            try:
                await self.service_topics.watch(ep.client_id for ep in self.endpoints.values() if ep.topic_enabled)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sync: checking the services' topics: %s: %s", type(exc).__name__, exc)

    # -- recording ------------------------------------------------------------------------

    async def _flush(self) -> None:
        self.results_ready.clear()
        results, self.results = self.results, []
        if not results:
            return
        try:
            async with self.sessions.begin() as db:
                await plan_for_now(db)
                await self._record(db, results)
        except BaseException:
            self.results[:0] = results
            self.results_ready.set()
            raise
        self.webhook_gone_recorded({r.job.service_id for r in results if r.outcome.result == "gone"})
        for r in results:
            if r.outcome.result == "ok" and r.job.first_pending_at is not None:
                self.metrics.delivery_latency.labels(r.job.channel).observe(max(0.0, (r.at - r.job.first_pending_at).total_seconds()))

    async def _record(self, db: AsyncSession, results: list[_Result]) -> None:
        s = Service.__table__.c
        # Rows are locked in key order, as the fan-out's upserts do, so the two never deadlock.
        results = sorted(results, key=lambda r: (r.job.service_id, r.job.account_id, r.job.channel))
        ok = [r for r in results if r.outcome.result == "ok"]
        failed = [r for r in results if r.outcome.result != "ok"]
        if ok:
            await _settle(db, ok)
            healthy = sorted({r.job.service_id for r in ok if r.job.channel == "webhook"})
            if healthy:
                recovered = (
                    await db.execute(
                        update(Service.__table__)
                        .where(s.id.in_(healthy), or_(s.webhook_failing_since.is_not(None), s.webhook_quarantined_at.is_not(None)))
                        .values(webhook_failing_since=None, webhook_quarantined_at=None, webhook_last_error=None)
                        .returning(s.id)
                    )
                ).scalars().all()
                if recovered:
                    await resume(db, list(recovered))
                    log.info("sync: the webhook(s) of service(s) %s recovered", sorted(recovered))
                    self._endpoints_at = -1e9
        for r in failed:
            await self._record_failure(db, r)

    async def _record_failure(self, db: AsyncSession, r: _Result) -> None:
        settings = self.settings
        job, outcome, now = r.job, r.outcome, r.at
        d = Delivery.__table__.c
        s = Service.__table__.c
        error = (outcome.error or "failed")[:500]
        if outcome.result == "gone":
            await db.execute(
                update(Service.__table__).where(s.id == job.service_id).values(webhook_disabled_at=now, webhook_last_error=error)
            )
            await db.execute(update(Delivery.__table__).where(d.id == job.delivery_id).values(next_attempt_at=now, last_error=error))
            log.warning("sync: the webhook of service %s answered 410 Gone and is disabled", job.service_id)
            return
        failing_since = job.failing_since or now
        attempts = job.attempts + 1
        # Not if the version this attempt carried has been delivered meanwhile, nor once the row
        # was given up: an attempt that stalled past its lease, while another took the row and
        # succeeded or gave up, comes too late.
        this = update(Delivery.__table__).where(d.id == job.delivery_id, d.state == ACTIVE, d.delivered_version < job.version)
        if (now - failing_since).total_seconds() >= settings.sync_give_up_after:
            row = (
                await db.execute(
                    this.values(state="dead", attempts=attempts, last_error=error, failing_since=failing_since, next_attempt_at=now)
                    .returning(d.account_id)
                )
            ).first()
            if row is not None:
                await db.execute(
                    insert(DeadLetter).values(
                        delivery_id=job.delivery_id, service_id=job.service_id, account_id=row.account_id, channel=job.channel,
                        version=job.version, attempts=attempts, last_error=error, failing_since=failing_since, gave_up_at=now,
                    )
                )
                log.warning("sync: gave up delivering version %s to service %s (%s)", job.version, job.service_id, job.channel)
            return
        schedule = settings.sync_retry_schedule
        delay = schedule[min(attempts - 1, len(schedule) - 1)]
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        next_at = now + dt.timedelta(seconds=delay)
        recorded = await db.execute(this.values(attempts=attempts, last_error=error, failing_since=failing_since, next_attempt_at=next_at))
        if job.channel != "webhook" or not recorded.rowcount:
            return
        await db.execute(
            update(Service.__table__)
            .where(s.id == job.service_id)
            .values(webhook_failing_since=func.coalesce(s.webhook_failing_since, now), webhook_last_error=error)
        )
        endpoint_failing = await db.scalar(select(s.webhook_failing_since).where(s.id == job.service_id))
        if endpoint_failing is not None and (now - _aware(endpoint_failing)).total_seconds() >= settings.sync_quarantine_after:
            probe = now + dt.timedelta(seconds=settings.sync_quarantine_probe)
            quarantined = await db.execute(
                update(Service.__table__)
                .where(s.id == job.service_id, s.webhook_quarantined_at.is_(None))
                .values(webhook_quarantined_at=now)
            )
            if quarantined.rowcount:
                log.warning("sync: the webhook of service %s has failed since %s and is quarantined", job.service_id, endpoint_failing)
                self._endpoints_at = -1e9
            # Slowed: nothing more to this endpoint before the next probe.
            await db.execute(
                update(Delivery.__table__)
                .where(d.service_id == job.service_id, d.channel == "webhook", d.state == ACTIVE, d.next_attempt_at < probe)
                .values(next_attempt_at=probe)
            )


def _settled_values(i: Any, v: Any, g: Any, t: Any) -> dict[str, Any]:
    """A delivered row's new values: settled only if no newer request came while it was in
    flight (same generation); otherwise it stays pending and the newer state is sent next."""
    d = Delivery.__table__.c
    same = d.generation == g
    return {
        "delivered_version": case((and_(same, d.delivered_version < v), v), else_=d.delivered_version),
        "changed": case((same, 0), else_=d.changed),
        "snapshot": case((same, False), else_=d.snapshot),
        "first_pending_at": case((same, None), else_=d.first_pending_at),
        "attempts": 0,
        "failing_since": None,
        "last_error": None,
        "delivered_at": t,
        "next_attempt_at": t,
    }


_SETTLE_ONE = update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("i")).values(
    _settled_values(bindparam("i"), bindparam("v"), bindparam("g"), bindparam("t"))
)
_SETTLED = func.unnest(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("versions", type_=ARRAY(Integer)),
    bindparam("generations", type_=ARRAY(Integer)),
    bindparam("ats", type_=ARRAY(UTCDateTime())),
).table_valued("i", "v", "g", "t").render_derived(name="o", with_types=False)
_SETTLE_MANY = update(Delivery.__table__).where(Delivery.__table__.c.id == _SETTLED.c.i).values(
    _settled_values(_SETTLED.c.i, _SETTLED.c.v, _SETTLED.c.g, _SETTLED.c.t)
)
_LOCK_IN_ORDER = (
    select(Delivery.__table__.c.id)
    .where(Delivery.__table__.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))))
    .order_by(Delivery.__table__.c.service_id, Delivery.__table__.c.account_id, Delivery.__table__.c.channel)
    .with_for_update()
)


async def _settle(db: AsyncSession, ok: list[_Result]) -> None:
    """Record deliveries that succeeded (``ok`` in key order). On Postgres in one statement, its
    rows first locked in key order, as the fan-out's upserts lock them (so the two never
    deadlock); elsewhere row by row, in that order."""
    if db.bind.dialect.name != "postgresql":
        await db.execute(_SETTLE_ONE, [{"i": r.job.delivery_id, "v": r.job.version, "g": r.job.generation, "t": r.at} for r in ok])
        return
    ids = [r.job.delivery_id for r in ok]
    await db.execute(_LOCK_IN_ORDER, {"ids": ids})
    await db.execute(
        _SETTLE_MANY,
        {"ids": ids, "versions": [r.job.version for r in ok], "generations": [r.job.generation for r in ok], "ats": [r.at for r in ok]},
    )


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
