"""Delivering notices: the one-off events of ``identity.notices`` (an unlink, a rights request,
a restriction) to each service's webhook and topic.

Unlike profile deliveries, notices are events, not state: each is sent as written, at least once,
with its ``message_id`` as the ``webhook-id`` on every attempt. One person's notices to one
service reach each channel in the order they were written: a notice is claimed only when it is
the oldest pending one of its (service, person, channel), and a claimed notice is leased (its
``next_attempt_at`` pushed ``sync_lease`` ahead), so at most one of them is in flight, across
every worker. On Postgres claims take ``FOR UPDATE SKIP LOCKED``. A worker that stalls past its
lease may see the notice taken and tried again; its own outcome then counts only if no later
attempt has been recorded first.

Failures follow the profile deliveries' rules: retried on ``sync_retry_schedule`` (never sooner
than a ``Retry-After``), ``dead`` after failing for ``sync_give_up_after``; a ``410`` disables the
webhook (its notices wait until it is enabled again); a notice the webhook accepts marks the
endpoint healthy again."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, replace

import aiohttp
from sqlalchemy import and_, func, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity.db.engine import plan_for_now
from identity.db.models import PENDING, Notice, Service, utcnow
from identity.db.units import whole
from identity.sealing import KeyCipher
from identity.settings import Settings
from sync import webhooks
from sync.deliver import Deliverer, Endpoint, load_endpoints, resume
from sync.metrics import SyncMetrics

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
POLL_SECONDS = 0.25
ENDPOINTS_REFRESH = 5.0


@dataclass(frozen=True)
class _Job:
    id: int
    service_id: int
    channel: str
    key: str
    message_id: str
    body: str
    attempts: int
    failing_since: dt.datetime | None


class NoticeDeliverer:
    """Claims due notices and sends them. Kafka goes through the profile ``Deliverer``'s producer
    (one producer per worker process, topics created on first use)."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        cipher: KeyCipher,
        http: aiohttp.ClientSession,
        *,
        publisher: Deliverer,
        metrics: SyncMetrics,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cipher = cipher
        self.http = http
        self.publisher = publisher
        self.metrics = metrics
        self.wake = wake or asyncio.Event()
        self.timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout)
        self.endpoints: dict[int, Endpoint] = {}
        self._endpoints_at = -1e9
        self.inflight: dict[tuple[int, str], int] = defaultdict(int)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        backoff = 0.5
        try:
            while True:
                try:
                    await self._refresh_endpoints()
                    self.wake.clear()  # before looking, so a wake-up during the claim is not lost
                    jobs = await whole(self.claim(CLAIM_BATCH))
                    backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 (recorded and retried, never lost)
                    log.warning(
                        "sync notices: %s: %s; retrying in %.1f s",
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                for job in jobs:
                    self._start(job)
                if not jobs:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def _start(self, job: _Job) -> None:
        key = (job.service_id, job.channel)
        self.inflight[key] += 1
        task = asyncio.create_task(self._deliver(job), name=f"sync-notice-{job.id}")
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.inflight[key] -= 1
            self.wake.set()  # the next notice of that person may be due now

        task.add_done_callback(done)

    async def _refresh_endpoints(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._endpoints_at > ENDPOINTS_REFRESH:
            async with self.sessions() as db:
                self.endpoints = await load_endpoints(db, self.cipher)
            self._endpoints_at = now

    def _disable(self, service_id: int) -> None:
        endpoint = self.endpoints.get(service_id)
        if endpoint is not None and not endpoint.disabled:
            self.endpoints[service_id] = replace(endpoint, disabled=True)

    def _closed(self) -> tuple[list[int], list[int]]:
        """Services whose webhook or topic takes no notice now: none, disabled, or at its cap of
        notices in flight (one while the webhook is quarantined). The cap is checked before a
        claim, so one claim may go over it; notices are few, and each retries on its own clock."""
        cap = self.settings.sync_service_concurrency
        webhook, topic = [], []
        for sid, ep in self.endpoints.items():
            if (
                ep.webhook_url is None
                or ep.signer is None
                or ep.disabled
                or self.inflight[(sid, "webhook")] >= (1 if ep.quarantined else cap)
            ):
                webhook.append(sid)
            if (
                not ep.topic_enabled
                or self.publisher.bootstrap is None
                or self.inflight[(sid, "topic")] >= cap
            ):
                topic.append(sid)
        return webhook, topic

    async def claim(self, limit: int) -> list[_Job]:
        """Lease up to ``limit`` due notices, each the oldest pending one of its (service,
        person, channel)."""
        async with self.sessions.begin() as db:
            await plan_for_now(db)
            await db.connection()
            now = utcnow()  # the lease runs from here, not from before a wait for a connection
            n = Notice.__table__.c
            earlier = Notice.__table__.alias("earlier")
            e = earlier.c
            no_webhook, no_topic = self._closed()
            known = list(self.endpoints)
            picked = (
                select(n.id)
                .where(
                    n.state == PENDING,
                    n.next_attempt_at <= now,
                    n.service_id.in_(known),
                    not_(and_(n.channel == "webhook", n.service_id.in_(no_webhook))),
                    not_(and_(n.channel == "topic", n.service_id.in_(no_topic))),
                    ~select(e.id)
                    .where(
                        e.state == PENDING,
                        e.service_id == n.service_id,
                        e.channel == n.channel,
                        e.key == n.key,
                        e.id < n.id,
                    )
                    .exists(),
                )
                .order_by(n.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
                .correlate(None)  # not to the UPDATE of the same table around it
            )
            rows = (
                await db.execute(
                    update(Notice.__table__)
                    .where(n.id.in_(picked.scalar_subquery()))
                    .values(
                        next_attempt_at=now
                        + dt.timedelta(seconds=self.settings.sync_lease)
                    )
                    .returning(
                        n.id,
                        n.service_id,
                        n.channel,
                        n.key,
                        n.message_id,
                        n.body,
                        n.attempts,
                        n.failing_since,
                    )
                )
            ).all()
        return sorted((_Job(*r) for r in rows), key=lambda j: j.id)

    async def _deliver(self, job: _Job) -> None:
        outcome = await self._send(job)
        self.metrics.notices.labels(job.channel, outcome.result).inc()
        if outcome.result != "gone":
            await self._record_soon(job, outcome)
            return
        # Nothing more to that webhook from this worker, profile deliveries included, until the
        # disabling is recorded (or could not be: then the database says what holds).
        self.publisher.webhook_gone(job.service_id)
        self._disable(job.service_id)
        try:
            await self._record_soon(job, outcome)
        finally:
            self.publisher.webhook_gone_recorded({job.service_id})
            self._endpoints_at = -1e9

    async def _record_soon(self, job: _Job, outcome: webhooks.Outcome) -> None:
        for attempt in range(3):
            try:
                await whole(self._record_now(job, outcome))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (recorded and retried, never lost)
                # Unrecorded, the notice keeps its lease and is sent again when it runs out.
                log.warning(
                    "sync notices: could not record notice %s: %s: %s",
                    job.id,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _send(self, job: _Job) -> webhooks.Outcome:
        endpoint = self.endpoints.get(job.service_id)
        try:
            if endpoint is None:
                return webhooks.Outcome("retry", "the service has no delivery channel")
            if job.channel == "webhook":
                if endpoint.webhook_url is None or endpoint.signer is None:
                    return webhooks.Outcome("retry", "the service has no webhook now")
                return await webhooks.post(
                    self.http,
                    endpoint.webhook_url,
                    endpoint.signer,
                    job.message_id,
                    job.body,
                    timeout=self.timeout,
                )
            if not endpoint.topic_enabled:
                return webhooks.Outcome("retry", "the service has no topic now")
            return await self.publisher.publish(
                endpoint.client_id, job.key, job.body, job.message_id
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (recorded and retried, never lost)
            log.warning(
                "sync: notice %s to service %s failed: %s: %s",
                job.id,
                job.service_id,
                type(exc).__name__,
                exc,
            )
            return webhooks.Outcome("retry", f"could not send: {type(exc).__name__}")

    async def _record_now(self, job: _Job, outcome: webhooks.Outcome) -> None:
        async with self.sessions.begin() as db:
            await self._record(db, job, outcome, utcnow())

    async def _record(
        self, db: AsyncSession, job: _Job, outcome: webhooks.Outcome, now: dt.datetime
    ) -> None:
        n = Notice.__table__.c
        s = Service.__table__.c
        # Only the attempt the row last counted: when a lease ran out and another attempt has
        # been recorded since, this late outcome is dropped rather than counted over it.
        this = update(Notice.__table__).where(
            n.id == job.id, n.state == "pending", n.attempts == job.attempts
        )
        attempts = job.attempts + 1
        if outcome.result == "ok":
            await db.execute(
                this.values(
                    state="delivered",
                    delivered_at=now,
                    attempts=attempts,
                    last_error=None,
                    next_attempt_at=now,
                )
            )
            if job.channel == "webhook":
                recovered = (
                    (
                        await db.execute(
                            update(Service.__table__)
                            .where(
                                s.id == job.service_id,
                                or_(
                                    s.webhook_failing_since.is_not(None),
                                    s.webhook_quarantined_at.is_not(None),
                                ),
                            )
                            .values(
                                webhook_failing_since=None,
                                webhook_quarantined_at=None,
                                webhook_last_error=None,
                            )
                            .returning(s.id)
                        )
                    )
                    .scalars()
                    .all()
                )
                if recovered:
                    await resume(db, list(recovered))
                    self._endpoints_at = -1e9
            return
        error = (outcome.error or "failed")[:500]
        if outcome.result == "gone":
            await db.execute(
                update(Service.__table__)
                .where(s.id == job.service_id)
                .values(webhook_disabled_at=now, webhook_last_error=error)
            )
            # It waits, due, until the webhook is enabled again.
            await db.execute(this.values(next_attempt_at=now, last_error=error))
            log.warning(
                "sync: the webhook of service %s answered 410 Gone and is disabled",
                job.service_id,
            )
            return
        failing_since = job.failing_since or now
        if (now - failing_since).total_seconds() >= self.settings.sync_give_up_after:
            await db.execute(
                this.values(
                    state="dead",
                    attempts=attempts,
                    last_error=error,
                    failing_since=failing_since,
                    next_attempt_at=now,
                )
            )
            log.warning(
                "sync: gave up delivering notice %s to service %s (%s)",
                job.id,
                job.service_id,
                job.channel,
            )
        else:
            schedule = self.settings.sync_retry_schedule
            delay = schedule[min(attempts - 1, len(schedule) - 1)]
            if outcome.retry_after is not None:
                delay = max(delay, outcome.retry_after)
            await db.execute(
                this.values(
                    attempts=attempts,
                    last_error=error,
                    failing_since=failing_since,
                    next_attempt_at=now + dt.timedelta(seconds=delay),
                )
            )
        if job.channel == "webhook":
            await db.execute(
                update(Service.__table__)
                .where(s.id == job.service_id)
                .values(
                    webhook_failing_since=func.coalesce(s.webhook_failing_since, now),
                    webhook_last_error=error,
                )
            )
