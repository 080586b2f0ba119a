"""Notices: the one-off events of ``identity.notices`` (an unlink, a rights request, a
restriction) and the Shared Signals SETs of ``identity.ssf`` (channel ``ssf``: pushed, RFC 8935,
through :mod:`sync.ssf`; channel ``ssf_poll`` rows are never claimed, the service polls them),
the ``notices`` table as a kind of :mod:`sync.engine`.

Unlike profile deliveries, notices are events, not state: each is sent as written, at least once,
with its ``message_id`` as the ``webhook-id`` on every attempt. One person's notices to one
service reach each channel in the order they were written: a notice is claimed only when it is
the oldest pending one of its (service, person, channel), and a claimed notice is leased (its
``next_attempt_at`` pushed ``sync_lease`` ahead), so at most one of them is in flight, across
every worker. On Postgres claims take ``FOR UPDATE SKIP LOCKED``. A worker that stalls past its
lease may see the notice taken and tried again; its own outcome then counts only if no later
attempt has been recorded first.

On the SCIM channel a notice is an intent (deactivate or delete the person's User), and SCIM
is state: a ``deactivate`` of a person who linked the service again by the time it is claimed
is settled unsent (:meth:`Notices._still_wanted`).

Outcomes follow the one policy of :mod:`sync.outcomes`, as profile deliveries' do: retried on
``sync_retry_schedule`` (never sooner than a ``Retry-After``), ``dead`` after failing for
``sync_give_up_after``; a ``410`` disables the webhook (its notices wait until it is enabled
again); a notice's failures count toward the webhook's failing and quarantine state, and a notice
the webhook accepts marks it healthy again."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Update, and_, bindparam, not_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import PENDING, Account, Link, Notice, UTCDateTime
from identity.settings import Settings
from sync.endpoints import Endpoints
from sync.engine import Result
from sync.metrics import SyncMetrics
from sync.outcomes import DEAD, GONE, Decision

log = logging.getLogger(__name__)

CLAIM_BATCH = 100


@dataclass(frozen=True)
class Job:
    id: int
    service_id: int
    channel: str
    key: str
    message_id: str
    body: str
    attempts: int
    failing_since: dt.datetime | None
    created_at: dt.datetime | None = None
    request_id: str | None = None


#: The earliest due notice's time (of those that are sent), if any is due: read in
#: ``ix_notices_due``'s order.
_ANY_DUE = (
    select(Notice.__table__.c.next_attempt_at)
    .where(
        Notice.__table__.c.state == PENDING,
        Notice.__table__.c.next_attempt_at <= bindparam("now", type_=UTCDateTime()),
        Notice.__table__.c.channel != "ssf_poll",
    )
    .order_by(Notice.__table__.c.next_attempt_at)  # in the due index's order (see sync.deliver)
    .limit(1)
)


class Notices:
    """The notices' kind (see :class:`sync.engine.Kind`)."""

    name = "notices"
    claim_batch = CLAIM_BATCH
    # Ordered per (service, person, channel): recording a notice makes the next one of its key
    # claimable, so the claims look again at once.
    due_after_recording = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def lock_order(self, job: Job) -> tuple[int, str, str, int]:
        return (job.service_id, job.key, job.channel, job.id)

    def since(self, job: Job) -> dt.datetime | None:
        return job.created_at  # a notice's latency runs from its writing

    def count(self, metrics: SyncMetrics, channel: str, result: str) -> None:
        metrics.notices.labels(channel, result).inc()

    def observe(self, metrics: SyncMetrics, results: list[Result]) -> None:
        pass

    async def jobs_for(self, db: AsyncSession, endpoints: Endpoints, taken: object) -> list[Job]:
        raise NotImplementedError("notices are not recorded by the fan-out")

    async def any_due(self, db: AsyncSession, now: dt.datetime) -> bool:
        return await db.scalar(_ANY_DUE, {"now": now}) is not None

    async def claim(
        self, db: AsyncSession, limit: int, now: dt.datetime, endpoints: Endpoints, inflight: Mapping[tuple[int, str], int]
    ) -> list[Job]:
        """Lease up to ``limit`` due notices, each the oldest pending one of its (service,
        person, channel). Services at their cap are left out before the claim, so one claim may
        go over it; notices are few, and each retries on its own clock."""
        n = Notice.__table__.c
        earlier = Notice.__table__.alias("earlier")
        e = earlier.c
        closed = endpoints.closed(inflight)
        no_ssf = endpoints.closed_ssf(inflight)
        known = list(endpoints.by_id)
        picked = (
            select(n.id)
            .where(
                n.state == PENDING,
                n.next_attempt_at <= now,
                n.service_id.in_(known),
                *(not_(and_(n.channel == c, n.service_id.in_(ids))) for c, ids in closed.items()),
                not_(and_(n.channel == "ssf", n.service_id.in_(no_ssf))),
                # Polled SETs wait for the service (identity.ssf.poll); nothing sends them.
                n.channel != "ssf_poll",
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
                .values(next_attempt_at=now + dt.timedelta(seconds=self.settings.sync_lease))
                .returning(n.id, n.service_id, n.channel, n.key, n.message_id, n.body, n.attempts, n.failing_since, n.created_at, n.request_id)
            )
        ).all()
        jobs = sorted((Job(*r) for r in rows), key=lambda j: j.id)
        return await self._still_wanted(db, jobs, now)

    async def _still_wanted(self, db: AsyncSession, jobs: list[Job], now: dt.datetime) -> list[Job]:
        """SCIM is state: a ``deactivate`` claimed (or retried) after the person linked the
        service again, with an account that may be shared, would undo the User the relink made
        active. It is settled unsent."""
        deactivating = [j for j in jobs if j.channel == "scim" and j.body.startswith('{"op":"deactivate"')]
        if not deactivating:
            return jobs
        live = set(
            (
                await db.execute(
                    select(Link.service_id, Account.sub)
                    .join(Account, Account.id == Link.account_id)
                    .where(
                        Link.service_id.in_({j.service_id for j in deactivating}),
                        Account.sub.in_({j.key for j in deactivating}),
                        Link.is_active,
                        Account.may_be_shared,
                    )
                )
            ).all()
        )
        moot = [j.id for j in deactivating if (j.service_id, j.key) in live]
        if not moot:
            return jobs
        n = Notice.__table__.c
        await db.execute(update(Notice.__table__).where(n.id.in_(moot)).values(state="delivered", delivered_at=now, next_attempt_at=now))
        return [j for j in jobs if j.id not in moot]

    def _this(self, job: Job) -> Update:
        # Only the attempt the row last counted: when a lease ran out and another attempt has
        # been recorded since, this late outcome is dropped rather than counted over it.
        n = Notice.__table__.c
        return update(Notice.__table__).where(n.id == job.id, n.state == PENDING, n.attempts == job.attempts)

    async def settle(self, db: AsyncSession, settled: list[tuple[Result, Decision]]) -> None:
        for r, d in settled:
            await db.execute(
                self._this(r.job).values(
                    state="delivered", delivered_at=r.at, attempts=d.attempts, last_error=None, next_attempt_at=r.at,
                    last_status=r.outcome.status, last_delay_ms=r.delay_ms,
                )
            )

    async def record(self, db: AsyncSession, result: Result, decision: Decision) -> bool:
        job, now = result.job, result.at
        this = self._this(job).values(last_status=result.outcome.status, last_delay_ms=result.delay_ms)
        if decision.action == GONE:
            # It waits, due, until the webhook is enabled again.
            return bool((await db.execute(this.values(next_attempt_at=now, last_error=decision.error))).rowcount)
        if decision.action == DEAD:
            done = await db.execute(
                this.values(state="dead", attempts=decision.attempts, last_error=decision.error, failing_since=decision.failing_since, next_attempt_at=now)
            )
            if done.rowcount:
                log.warning("sync: gave up delivering notice %s to service %s (%s)", job.id, job.service_id, job.channel)
            return bool(done.rowcount)
        done = await db.execute(
            this.values(
                attempts=decision.attempts, last_error=decision.error,
                failing_since=decision.failing_since, next_attempt_at=decision.next_attempt_at,
            )
        )
        return bool(done.rowcount)
