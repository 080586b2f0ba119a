"""Profile deliveries: the ``deliveries`` table as a kind of :mod:`sync.engine`.

The table is the durable retry store: one row per person, service and channel, coalesced (a
newer change supersedes a pending one; the fan-out records them). The engine claims due rows, in
order of due time, up to each service's room; sends them; and records the outcomes in batches as
:mod:`sync.outcomes` decides (retried on the schedule, a webhook failing for long quarantined, a
410 disabling it, a delivery failing for ``sync_give_up_after`` given up to the dead letters).
A delivery's outcome settles its row only if no newer request came while it was in flight (the
row's ``generation``), and a failure only counts if the version it carried is not delivered yet.

Every delivery is built from the person's state at the time it is sent: the whole profile the
service may see, at the account's current version."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    BigInteger,
    Integer,
    and_,
    bindparam,
    case,
    func,
    insert,
    not_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db import dialect
from identity.db.models import (
    ACTIVE,
    Account,
    AccountStatus,
    DeadLetter,
    Delivery,
    Link,
    UTCDateTime,
    utcnow,
)
from identity.settings import Settings
from schemas.events import ProfileSnapshot, ProfileUpdated
from sync import projection, scim
from sync.endpoints import Endpoints
from sync.engine import Result
from sync.metrics import SyncMetrics
from sync.outcomes import DEAD, GONE, Decision

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sync.fanout import Taken

log = logging.getLogger(__name__)

CLAIM_BATCH = 200
_ID_NAMESPACE = uuid.UUID("6f1d2c4e-8b1a-4c55-9a57-0e5b7a1c9d11")


def message_id(delivery_id: int, generation: int, version: int) -> str:
    """The same id for every retry of one delivery, a new one for each new request to deliver
    (receivers may deduplicate on it): the name-based UUID (version 5, RFC 9562) of
    ``delivery:generation:version``, as ``uuid.uuid5`` makes it, without building a UUID object
    on this hot path."""
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE_BYTES + f"{delivery_id}:{generation}:{version}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC's variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


#: What building a delivery needs of an account (plain rows: read by attribute name like the model).
ACCOUNT_COLUMNS = [Account.__table__.c[name] for name in (
    "id", "sub", "status", "version", "updated_at", "email", "email_verified", "name", "given_name", "family_name",
    "birthdate", "locale", "zoneinfo", "phone_number", "address", "marketing_news", "marketing_competitions", "marketing_offers",
)]

#: What sending a delivery needs of its row (claimed, or leased as the fan-out records it).
CLAIMED_COLUMNS = tuple(Delivery.__table__.c[name] for name in (
    "id", "service_id", "account_id", "channel", "changed", "snapshot", "origin", "origin_self",
    "first_pending_at", "failing_since", "attempts", "delivered_at", "generation", "next_attempt_at", "request_id",
))

UPDATED = ProfileUpdated.model_fields["type"].default
SNAPSHOT = ProfileSnapshot.model_fields["type"].default


def render(kind: str, mid: str, stamp: str, data: dict[str, Any]) -> str:
    """The JSON body of a delivery: ``schemas.events.ProfileUpdated`` or ``ProfileSnapshot``
    (built as plain JSON with orjson on this hot path; the tests validate what receivers get
    against the models, and the models are what /schemas/ and /asyncapi.json publish). What
    orjson refuses (a lone surrogate in a stored name) is encoded by the standard library."""
    body = {"type": kind, "id": mid, "timestamp": stamp, "data": data}
    try:
        return orjson.dumps(body).decode()
    except orjson.JSONEncodeError:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _timestamp(now: dt.datetime) -> str:
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def read_accounts(db: AsyncSession, ids: set[int]) -> dict[int, Any]:
    return {a.id: a for a in await db.execute(_accounts_by_id(dialect.name(db)), {"ids": list(ids)})}


@functools.cache
def _accounts_by_id(dialect_name: str) -> Any:
    return select(*ACCOUNT_COLUMNS).where(dialect.among(dialect_name, Account.__table__.c.id, "ids"))


@functools.cache
def _active_scopes(dialect_name: str) -> Any:
    """The scopes of the active links between the ``accounts`` and the ``services`` (ids)."""
    link = Link.__table__.c
    return select(link.account_id, link.service_id, link.scope).where(
        dialect.among(dialect_name, link.account_id, "accounts"), dialect.among(dialect_name, link.service_id, "services"), Link.is_active
    )


@dataclass(frozen=True)
class Job:
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
    request_id: str | None = None

    @property
    def key(self) -> str:
        return self.sub  # a service's topic is keyed by the person


class Deliveries:
    """The profile deliveries' kind (see :class:`sync.engine.Kind`)."""

    name = "deliveries"
    claim_batch = CLAIM_BATCH
    # State, coalesced: recording a delivery makes no other row due (one superseded in flight
    # is reported by the fan-out that superseded it).
    due_after_recording = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def lock_order(self, job: Job) -> tuple[int, int, str]:
        return (job.service_id, job.account_id, job.channel)  # the fan-out's upserts' order

    def since(self, job: Job) -> dt.datetime | None:
        return job.first_pending_at  # the commit of the oldest change it carries

    def count(self, metrics: SyncMetrics, channel: str, result: str) -> None:
        metrics.deliveries.labels(channel, result).inc()

    def observe(self, metrics: SyncMetrics, results: list[Result]) -> None:
        histograms: dict[str, Any] = {}
        for r in results:
            if r.outcome.result == "ok" and r.job.first_pending_at is not None:
                channel = r.job.channel
                histogram = histograms.get(channel)
                if histogram is None:
                    histogram = histograms[channel] = metrics.delivery_latency.labels(channel)
                histogram.observe(max(0.0, (r.at - r.job.first_pending_at).total_seconds()))

    async def jobs_for(self, db: AsyncSession, endpoints: Endpoints, taken: Taken) -> list[Job]:
        """From the accounts and scopes the fan-out's recording read."""
        return await self._build(db, endpoints, list(taken.rows), taken.accounts, taken.scopes)

    async def any_due(self, db: AsyncSession, now: dt.datetime) -> bool:
        return await db.scalar(_ANY_DUE, {"now": now}) is not None

    async def claim(
        self, db: AsyncSession, limit: int, now: dt.datetime, endpoints: Endpoints, inflight: Mapping[tuple[int, str], int]
    ) -> list[Job]:
        """Take up to ``limit`` due deliveries, in order of due time, within each service's room."""
        closed = endpoints.closed(inflight)
        d = Delivery.__table__.c
        due = (
            select(d.id, d.service_id, d.channel, d.next_attempt_at)
            .where(
                d.state == ACTIVE,
                d.wanted_version > d.delivered_version,
                d.next_attempt_at <= now,
                *(not_(and_(d.channel == c, d.service_id.in_(ids))) for c, ids in closed.items()),
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
        room = endpoints.claim_room(inflight)
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
        if any(endpoints.get(r.service_id) is None for r in claimed):
            await endpoints.load(db)  # a service registered or changed since the last read
        return await self._build(db, endpoints, claimed)

    async def _build(
        self,
        db: AsyncSession,
        endpoints: Endpoints,
        claimed: list[Any],
        accounts: dict[int, Any] | None = None,
        scopes: dict[tuple[int, int], str] | None = None,
    ) -> list[Job]:
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
                        _active_scopes(dialect.name(db)), {"accounts": list({a for a, _ in pairs}), "services": list({s for _, s in pairs})}
                    )
                )
                if (a, s) in pairs
            }
        # A SCIM row patches the User the service's server made for the person, if it made one.
        scim_ids: dict[tuple[int, int], str | None] = {}
        if any(r.channel == "scim" for r in claimed):
            wanted = {(r.account_id, r.service_id) for r in claimed if r.channel == "scim"}
            scim_ids = {
                (a, s): scim_id
                for a, s, scim_id in await db.execute(
                    select(Link.account_id, Link.service_id, Link.scim_id).where(
                        Link.account_id.in_({a for a, _ in wanted}), Link.service_id.in_({s for _, s in wanted})
                    )
                )
            }
        stamp = _timestamp(utcnow())
        jobs, dropped = [], []
        profiles: dict[tuple[int, str], dict[str, Any]] = {}  # services granted the same scopes see the same
        for r in claimed:
            account = accounts.get(r.account_id)
            scope = scopes.get((r.account_id, r.service_id))
            endpoint = endpoints.get(r.service_id)
            if account is None or scope is None or endpoint is None or account.status != AccountStatus.ACTIVE:
                dropped.append(r.id)  # unlinked or gone: nothing more is sent
                continue
            profile = profiles.get((r.account_id, scope))
            if profile is None:
                profile = profiles[(r.account_id, scope)] = projection.profile(account, scope)
            mid = message_id(r.id, r.generation, account.version)
            if r.channel == "scim":
                # State, not events: the User as the service may see it now (sync.scim).
                body = scim.put_intent(profile, account.sub, scim_ids.get((r.account_id, r.service_id)), activate=bool(r.snapshot))
                jobs.append(
                    Job(r.id, r.service_id, r.account_id, r.channel, account.sub, account.version, body, mid, r.first_pending_at, r.failing_since, r.attempts, r.generation)
                )
                continue
            data: dict[str, Any] = {"sub": account.sub, "version": account.version}
            if r.snapshot:
                data |= {"reason": "resync" if r.delivered_at else "linked", "profile": profile}
            else:
                changed = projection.names(r.changed & projection.visible_mask(scope))
                data |= {"changed": changed, "profile": profile, "origin": {"channel": r.origin, "this_service": bool(r.origin_self)}}
            body = render(SNAPSHOT if r.snapshot else UPDATED, mid, stamp, data)
            jobs.append(
                Job(r.id, r.service_id, r.account_id, r.channel, account.sub, account.version, body, mid, r.first_pending_at, r.failing_since, r.attempts, r.generation, r.request_id)
            )
        if dropped:
            await db.execute(
                update(Delivery.__table__)
                .where(Delivery.__table__.c.id.in_(dropped))
                .values(delivered_version=Delivery.__table__.c.wanted_version, changed=0, snapshot=False)
            )
        return jobs

    # -- recording ------------------------------------------------------------------------

    async def settle(self, db: AsyncSession, settled: list[tuple[Result, Decision]]) -> None:
        await _settle(db, [r for r, _ in settled])
        # The SCIM id of each User a service's server made or was found to have, kept on the link.
        made = [
            {"a": r.job.account_id, "s": r.job.service_id, "i": r.outcome.resource_id}
            for r, _ in settled
            if r.job.channel == "scim" and r.outcome.resource_id
        ]
        if made:
            link = Link.__table__.c
            await db.execute(
                update(Link.__table__)
                .where(link.account_id == bindparam("a"), link.service_id == bindparam("s"))
                .values(scim_id=bindparam("i")),
                made,
            )

    async def record(self, db: AsyncSession, result: Result, decision: Decision) -> bool:
        job, now = result.job, result.at
        d = Delivery.__table__.c
        answer = {"last_status": result.outcome.status, "last_delay_ms": result.delay_ms}
        if decision.action == GONE:
            # It waits, due, until the webhook is enabled again.
            await db.execute(
                update(Delivery.__table__).where(d.id == job.delivery_id).values(next_attempt_at=now, last_error=decision.error, **answer)
            )
            return True
        # Not if the version this attempt carried has been delivered meanwhile, nor once the row
        # was given up: an attempt that stalled past its lease, while another took the row and
        # succeeded or gave up, comes too late.
        this = update(Delivery.__table__).where(d.id == job.delivery_id, d.state == ACTIVE, d.delivered_version < job.version).values(**answer)
        if decision.action == DEAD:
            row = (
                await db.execute(
                    this.values(
                        state="dead", attempts=decision.attempts, last_error=decision.error,
                        failing_since=decision.failing_since, next_attempt_at=now,
                    ).returning(d.account_id, d.wanted_version)
                )
            ).first()
            if row is None:
                return False
            # The version given up is the newest the row wanted: a change may have come while this
            # attempt, carrying an older one, was in flight.
            await db.execute(
                insert(DeadLetter).values(
                    delivery_id=job.delivery_id, service_id=job.service_id, account_id=row.account_id, channel=job.channel,
                    version=row.wanted_version, attempts=decision.attempts, last_error=decision.error,
                    failing_since=decision.failing_since, gave_up_at=now,
                )
            )
            log.warning("sync: gave up delivering version %s to service %s (%s)", row.wanted_version, job.service_id, job.channel)
            return True
        recorded = await db.execute(
            this.values(
                attempts=decision.attempts, last_error=decision.error,
                failing_since=decision.failing_since, next_attempt_at=decision.next_attempt_at,
            )
        )
        return bool(recorded.rowcount)


def _settled_values(i: Any, v: Any, g: Any, t: Any, s: Any, ms: Any) -> dict[str, Any]:
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
        "last_status": s,
        "last_delay_ms": ms,
    }


#: The earliest due delivery's time, if any is due: read in ``ix_deliveries_due``'s order. With a
#: bare ``LIMIT 1`` Postgres expects a third of the rows to be pending (it has no statistics for
#: ``wanted_version > delivered_version``) and reads the table from its start for the first,
#: through every row when none is due; ordered, only the index's first entry answers.
_ANY_DUE = (
    select(Delivery.__table__.c.next_attempt_at)
    .where(
        Delivery.__table__.c.state == ACTIVE,
        Delivery.__table__.c.wanted_version > Delivery.__table__.c.delivered_version,
        Delivery.__table__.c.next_attempt_at <= bindparam("now", type_=UTCDateTime()),
    )
    .order_by(Delivery.__table__.c.next_attempt_at)
    .limit(1)
)
_SETTLE_ONE = update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("i")).values(
    _settled_values(bindparam("i"), bindparam("v"), bindparam("g"), bindparam("t"), bindparam("s"), bindparam("ms"))
)
_SETTLED = func.unnest(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("versions", type_=ARRAY(Integer)),
    bindparam("generations", type_=ARRAY(Integer)),
    bindparam("ats", type_=ARRAY(UTCDateTime())),
    bindparam("statuses", type_=ARRAY(Integer)),
    bindparam("delays", type_=ARRAY(BigInteger)),
).table_valued("i", "v", "g", "t", "s", "ms").render_derived(name="o", with_types=False)
_SETTLE_MANY = update(Delivery.__table__).where(Delivery.__table__.c.id == _SETTLED.c.i).values(
    _settled_values(_SETTLED.c.i, _SETTLED.c.v, _SETTLED.c.g, _SETTLED.c.t, _SETTLED.c.s, _SETTLED.c.ms)
)
_LOCK_IN_ORDER = (
    select(Delivery.__table__.c.id)
    .where(Delivery.__table__.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))))
    .order_by(Delivery.__table__.c.service_id, Delivery.__table__.c.account_id, Delivery.__table__.c.channel)
    .with_for_update()
)


async def _settle(db: AsyncSession, ok: list[Result]) -> None:
    """Record deliveries that succeeded (``ok`` in key order). On Postgres in one statement, its
    rows first locked in key order, as the fan-out's upserts lock them (so the two never
    deadlock); elsewhere row by row, in that order."""
    if not dialect.is_postgres(db):
        await db.execute(
            _SETTLE_ONE,
            [{"i": r.job.delivery_id, "v": r.job.version, "g": r.job.generation, "t": r.at, "s": r.outcome.status, "ms": r.delay_ms} for r in ok],
        )
        return
    ids = [r.job.delivery_id for r in ok]
    await db.execute(_LOCK_IN_ORDER, {"ids": ids})
    await db.execute(
        _SETTLE_MANY,
        {
            "ids": ids, "versions": [r.job.version for r in ok], "generations": [r.job.generation for r in ok], "ats": [r.at for r in ok],
            "statuses": [r.outcome.status for r in ok], "delays": [r.delay_ms for r in ok],
        },
    )

