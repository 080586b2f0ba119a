"""The fan-out: turns hub events into what each linked service should be sent.

A consumer in the group ``onesignin-sync`` reads ``onesignin.profile.v1``. For each batch it
records, in one database transaction, the deliveries the events call for (one row per person,
service and channel, coalesced: a newer change supersedes a pending one); only then are the
batch's offsets committed. They are committed together, about once a second
(``OFFSETS_EVERY``), when the consumer waits with nothing to read, before the consumer's
partitions are given to another worker, and when the worker stops: a commit per batch is a
broker round trip per batch, on the consumer's path. A worker that dies mid-batch, or before
the offsets of batches it recorded were committed, leaves them uncommitted; those batches are
read again and recording them again is idempotent (versions only rise, claim masks are OR-ed;
what is sent again carries the state as it is, and receivers keep the highest version)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import Gauge
from pydantic import ValidationError
from sqlalchemy import and_, bindparam, case, func, select, true, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity import outbox
from identity.db import dialect
from identity.db.engine import plan_for_now
from identity.db.models import Account, Delivery, Link, Service, utcnow
from identity.db.units import whole
from identity.db.upsert import insert_on
from identity.deliveries import channels_of
from identity.settings import Settings
from schemas.events import PROFILE_TOPIC, LinkCreated, ProfileChanged, hub_event
from sync import kafka, projection
from sync.backoff import Backoff
from sync.deliver import ACCOUNT_COLUMNS, CLAIMED_COLUMNS
from sync.endpoints import Room
from sync.engine import Engine
from sync.metrics import SyncMetrics

log = logging.getLogger(__name__)

GROUP_ID = "onesignin-sync"
UPSERT_CHUNK = 500
MAX_BACKOFF = 30.0
UNASSIGNED_RECHECK = 10.0  # seconds without partitions before the topic is looked for again
OFFSETS_EVERY = 1.0  # seconds between commits of recorded batches' offsets while batches keep coming
LAST_COMMIT_SECONDS = 5.0  # how long a stopping worker tries to commit what it recorded


@dataclass(frozen=True)
class _Target:
    account_id: int
    service_id: int
    client_id: str
    scope: str
    channels: tuple[str, ...]


@dataclass(frozen=True)
class Taken:
    """What a recording given :class:`sync.endpoints.Room` took: the rows it leased to the
    worker (``CLAIMED_COLUMNS``), to be sent once its transaction commits, with the accounts
    (``ACCOUNT_COLUMNS`` rows by id) and active links' scopes (by account and service) it read,
    from which their jobs are built. ``count``: the rows touched; ``left``: rows recorded due
    but not taken (for the claims); ``in_flight``: rows superseded while being sent."""

    count: int = 0
    rows: tuple[Any, ...] = ()
    left: int = 0
    in_flight: int = 0
    accounts: Mapping[int, Any] = field(default_factory=lambda: MappingProxyType({}))
    scopes: Mapping[tuple[int, int], str] = field(default_factory=lambda: MappingProxyType({}))


async def record(db: AsyncSession, events: list[ProfileChanged | LinkCreated], *, echo_suppression: bool) -> int:
    """Record the deliveries ``events`` call for; return how many rows were touched."""
    return (await _record(db, events, echo_suppression=echo_suppression, room=None)).count


async def record_taking(db: AsyncSession, events: list[ProfileChanged | LinkCreated], *, echo_suppression: bool, room: Room) -> Taken:
    """Record the deliveries ``events`` call for, and lease the rows within ``room`` to the
    caller as they are recorded (no claim in between): what was taken."""
    return await _record(db, events, echo_suppression=echo_suppression, room=room)


async def _record(db: AsyncSession, events: list[ProfileChanged | LinkCreated], *, echo_suppression: bool, room: Room | None) -> Taken:
    subs = {e.sub for e in events}
    if not subs:
        return Taken()
    # An erased account (gone) or one restricted (a child without a guardian's consent) is
    # shared with nobody: its events call for no delivery.
    read: dict[int, Any] = {}
    scopes: dict[tuple[int, int], str] = {}
    on = dialect.name(db)
    if room is None:
        accounts = dict((await db.execute(_shared_accounts(on, whole=False), {"subs": list(subs)})).all())
    else:
        # The deliverer builds what it takes from these very rows.
        rows = (await db.execute(_shared_accounts(on, whole=True), {"subs": list(subs)})).all()
        read = {a.id: a for a in rows}
        accounts = {a.sub: a.id for a in rows}
    if not accounts:
        return Taken()
    links = await db.execute(_active_links(on), {"accounts": list(accounts.values())})
    targets: dict[int, list[_Target]] = {}
    for account_id, service_id, scope, client_id, webhook_url, topic_enabled, scim_base_url in links:
        if room is not None:
            scopes[(account_id, service_id)] = scope
        channels = channels_of(webhook_url, topic_enabled, scim_base_url)
        if channels:
            targets.setdefault(account_id, []).append(_Target(account_id, service_id, client_id, scope, channels))

    now = utcnow()
    wanted: dict[tuple[int, int, str], dict[str, Any]] = {}
    known: list[dict[str, Any]] = []
    for event in events:
        account_id = accounts.get(event.sub)
        if account_id is None:
            continue  # the account is gone or restricted; nothing to tell anyone
        for target in targets.get(account_id, []):
            if isinstance(event, LinkCreated):
                if target.client_id != event.client_id:
                    continue
                changed, snapshot, origin, origin_self = 0, True, "person", False
            else:
                changed = projection.mask(event.changed) & projection.visible_mask(target.scope)
                if not changed:
                    continue  # nothing this service may see changed
                origin_self = event.client_id == target.client_id
                if origin_self and echo_suppression:
                    for channel in target.channels:
                        known.append({"s": target.service_id, "a": account_id, "c": channel, "v": event.version})
                    continue
                snapshot, origin = False, event.channel
            for channel in target.channels:
                key = (target.service_id, account_id, channel)
                row = wanted.get(key)
                if row is None:
                    wanted[key] = {
                        "service_id": target.service_id,
                        "account_id": account_id,
                        "channel": channel,
                        "wanted_version": event.version,
                        "delivered_version": 0,
                        "changed": changed,
                        "snapshot": snapshot,
                        "origin": origin,
                        "origin_self": origin_self,
                        "request_id": event.request_id,
                        "first_pending_at": event.occurred_at,
                        "state": "active",
                        "attempts": 0,
                        "next_attempt_at": now,
                    }
                else:
                    row["wanted_version"] = max(row["wanted_version"], event.version)
                    row["changed"] |= changed
                    row["snapshot"] = row["snapshot"] or snapshot
                    row["origin"], row["origin_self"] = origin, origin_self
                    row["request_id"] = event.request_id
                    row["first_pending_at"] = min(row["first_pending_at"], event.occurred_at)
    # Rows are locked in key order, as the deliverer's updates do, so the two never deadlock.
    values = [wanted[key] for key in sorted(wanted)]
    taken: list[Any] = []
    left = in_flight = 0
    if room is None:
        statement = _upsert(on)
        for start in range(0, len(values), UPSERT_CHUNK):
            await db.execute(statement, _parameters(db, values[start : start + UPSERT_CHUNK]))
    else:
        free = dict(room.room)
        for row in values:
            key = (row["service_id"], row["channel"])
            if free.get(key, 0) > 0:
                free[key] -= 1
                row["next_attempt_at"] = room.until
        statement = _upsert(on, returning=True)
        for start in range(0, len(values), UPSERT_CHUNK):
            for row in await db.execute(statement, _parameters(db, values[start : start + UPSERT_CHUNK])):
                # Leased by this recording, not an earlier pending row's schedule (kept as it was).
                if row.next_attempt_at == room.until:
                    taken.append(row)
                elif row.next_attempt_at <= now:
                    left += 1
                else:
                    in_flight += 1
    if known:
        await _note_known(db, known)
    return Taken(len(values), tuple(taken), left, in_flight, MappingProxyType(read), MappingProxyType(scopes))


@functools.cache
def _shared_accounts(dialect_name: str, *, whole: bool) -> Any:
    """The accounts among ``subs`` that may be shared: their ``sub`` and ``id``, or (``whole``)
    what building a delivery needs. Built once per database, as the statements below."""
    a = Account.__table__.c
    columns = ACCOUNT_COLUMNS if whole else (a.sub, a.id)
    return select(*columns).where(dialect.among(dialect_name, a.sub, "subs"), Account.may_be_shared)


@functools.cache
def _active_links(dialect_name: str) -> Any:
    """The active links of the ``accounts`` (ids), with the columns of their service the
    fan-out needs (a whole Service per link would decode its JSON columns each time)."""
    link, s = Link.__table__.c, Service.__table__.c
    return (
        select(link.account_id, link.service_id, link.scope, s.client_id, s.webhook_url, s.topic_enabled, s.scim_base_url)
        .join(Service.__table__, s.id == link.service_id)
        .where(dialect.among(dialect_name, link.account_id, "accounts"), Link.is_active)
    )


#: The columns of a wanted delivery, as ``_record`` builds them.
_WANTED = (
    "service_id", "account_id", "channel", "wanted_version", "delivered_version", "changed", "snapshot", "origin",
    "origin_self", "request_id", "first_pending_at", "state", "attempts", "next_attempt_at",
)


@functools.cache
def _upsert(dialect_name: str, *, returning: bool = False) -> Any:
    """Insert the wanted deliveries, or coalesce them into the pending ones. Built once per
    dialect (compiling it per batch would cost more than the database work). On Postgres the
    rows come as one array per column (``INSERT … SELECT FROM unnest(…)``): one statement text
    whatever the batch's size, prepared once per connection, where a multi-row VALUES of each
    size is a new statement to parse and plan; elsewhere it runs with one parameter set per row.
    ``returning``: with what the deliverer needs to send the rows (in no particular order)."""
    statement = _build_upsert(dialect_name)
    return statement.returning(*CLAIMED_COLUMNS) if returning else statement


def _parameters(db: AsyncSession, rows: list[dict[str, Any]]) -> Any:
    """``rows`` as ``_upsert`` takes them on this database: one array per column on Postgres."""
    if dialect.is_postgres(db):
        return {name: [row[name] for row in rows] for name in _WANTED}
    return rows


def _build_upsert(dialect_name: str) -> Any:
    d = Delivery.__table__.c
    stmt = insert_on(dialect_name, Delivery.__table__)
    if dialect_name == dialect.POSTGRES:
        arrays = func.unnest(*(bindparam(name, type_=dialect.array_of(d[name].type)) for name in _WANTED))
        # In the arrays' order (the rows' key order), as the row locks must be taken.
        wanted = arrays.table_valued(*_WANTED, with_ordinality="n").render_derived(name="w", with_types=False)
        stmt = stmt.from_select(list(_WANTED), select(*(wanted.c[name] for name in _WANTED)).order_by(wanted.c.n))
    new = stmt.excluded
    pending = d.wanted_version > d.delivered_version
    retrying = and_(pending, d.state == "active")
    return stmt.on_conflict_do_update(
        index_elements=["service_id", "account_id", "channel"],
        set_={
            "wanted_version": case((new.wanted_version > d.wanted_version, new.wanted_version), else_=d.wanted_version),
            # A snapshot is wanted even where this version was delivered before (relink, resync).
            "delivered_version": case((new.snapshot == true(), 0), else_=d.delivered_version),
            "changed": case((pending, d.changed.op("|")(new.changed)), else_=new.changed),
            "snapshot": case((pending, (d.snapshot == true()) | (new.snapshot == true())), else_=new.snapshot),
            "origin": new.origin,
            "origin_self": new.origin_self,
            "request_id": new.request_id,
            "first_pending_at": case((pending, d.first_pending_at), else_=new.first_pending_at),
            # A change never resets the retry schedule of a failing delivery (no retry storms).
            "next_attempt_at": case((retrying, d.next_attempt_at), else_=new.next_attempt_at),
            "attempts": case((retrying, d.attempts), else_=0),
            "failing_since": case((retrying, d.failing_since), else_=None),
            "state": "active",
            "generation": d.generation + 1,
        },
    )


async def _note_known(db: AsyncSession, known: list[dict[str, Any]]) -> None:
    """The service made this change itself: it knows this version (when nothing else is pending)."""
    d = Delivery.__table__.c
    await db.execute(
        update(Delivery.__table__)
        .where(
            d.service_id == bindparam("s"),
            d.account_id == bindparam("a"),
            d.channel == bindparam("c"),
            d.wanted_version <= d.delivered_version,
            d.delivered_version < bindparam("v"),
        )
        .values(wanted_version=bindparam("v"), delivered_version=bindparam("v")),
        known,
    )


def _outbox_id(headers: Any) -> list[int]:
    for name, value in headers or ():
        if name == "outbox-id":
            try:
                return [int(value)]
            except ValueError:
                return []
    return []


def parse(value: bytes | None) -> ProfileChanged | LinkCreated | None:
    if value is None:
        return None
    try:
        return hub_event.validate_python(json.loads(value))
    except (ValueError, ValidationError):
        return None


class Offsets:
    """The offsets of batches recorded but not yet committed to the group, by partition."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.recorded: dict[TopicPartition, int] = {}
        self.committed_at = asyncio.get_running_loop().time()

    def add(self, offsets: dict[TopicPartition, int]) -> None:
        self.recorded.update(offsets)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Never commit these (the consumer reads them again from elsewhere)."""
        for tp in partitions:
            self.recorded.pop(tp, None)

    def due(self) -> bool:
        return bool(self.recorded) and asyncio.get_running_loop().time() - self.committed_at >= OFFSETS_EVERY

    async def commit(self) -> None:
        recorded, self.recorded = self.recorded, {}
        self.committed_at = asyncio.get_running_loop().time()
        if recorded:
            try:
                await self.consumer.commit(recorded)
            except BaseException:
                # Kept for the next commit, unless newer offsets of their partitions came since.
                self.recorded = recorded | self.recorded
                raise


class _Rebalance(ConsumerRebalanceListener):
    """Partitions are only given up once the batch in hand is recorded and the offsets of what
    was recorded are committed; how many this worker holds is a gauge (a group whose workers all
    hold some has settled)."""

    def __init__(self, busy: asyncio.Lock, assigned: Gauge, offsets: Offsets) -> None:
        self.busy = busy
        self.assigned = assigned
        self.offsets = offsets

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.busy:
            self.assigned.set(0)
            if self.offsets.recorded:
                try:
                    await self.offsets.commit()
                except Exception as exc:
                    # Read again by the partitions' next owner: sent again, not lost.
                    log.warning("sync worker: could not commit the offsets of what was recorded before a rebalance: %s: %s", type(exc).__name__, exc)
                    self.offsets.recorded.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned.set(len(assigned))
        if assigned:
            log.info("sync worker: assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)))


class FanOut:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        bootstrap: str,
        *,
        metrics: SyncMetrics,
        wake: asyncio.Event | None = None,
        deliverer: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.wake = wake
        # The worker's own deliverer: deliveries it has room for are leased to it as they are
        # recorded and sent as soon as they are committed, with no claim in between.
        self.deliverer = deliverer
        self.busy = asyncio.Lock()

    async def run(self) -> None:
        backoff = Backoff(ceiling=MAX_BACKOFF)
        watch = kafka.BrokerWatch(self.settings, self.bootstrap, self.settings.kafka_topic_prefix + PROFILE_TOPIC)
        try:
            while True:
                consumer: AIOKafkaConsumer | None = None
                offsets: Offsets | None = None
                try:
                    prefix = self.settings.kafka_topic_prefix
                    await kafka.ensure_topics(self.settings, self.bootstrap, {prefix + PROFILE_TOPIC: self.settings.kafka_profile_partitions})
                    consumer = kafka.consumer(self.settings, self.bootstrap, prefix + GROUP_ID)
                    offsets = Offsets(consumer)
                    consumer.subscribe([prefix + PROFILE_TOPIC], listener=_Rebalance(self.busy, self.metrics.partitions_assigned, offsets))
                    await consumer.start()
                    backoff.succeeded()
                    await self._consume(consumer, watch, offsets)
                except asyncio.CancelledError:
                    # Stopping: what was recorded is committed, so that no other worker reads it again.
                    if offsets is not None and offsets.recorded:
                        await _last_commit(offsets)
                    raise
                except Exception as exc:
                    # The offsets recorded are not committed: after a broker's change they mean
                    # nothing, and after any other error the batches are read again, not lost.
                    delay = backoff.failed()
                    log.warning("sync worker: %s: %s; reconnecting in %.1f s", type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                finally:
                    if consumer is not None:
                        await consumer.stop()
                        self.metrics.partitions_assigned.set(0)
        finally:
            await watch.close()

    async def _record(self, events: list[ProfileChanged | LinkCreated], consumed: list[int]) -> tuple[Taken | None, list[Any]]:
        """Record a batch in one transaction, retried a few times on a transient conflict
        (a deadlock or a busy database) before the consumer gives up and reconnects. Returns what
        the worker's deliverer took, if it took part, and the jobs built for it."""
        for attempt in range(1, 6):
            try:
                room = self.deliverer.room() if self.deliverer is not None else None
                taken: Taken | None = None
                jobs: list[Any] = []
                async with self.sessions.begin() as db:
                    echo = self.settings.sync_echo_suppression
                    if room is None or self.deliverer is None:
                        await record(db, events, echo_suppression=echo)
                    else:
                        taken = await record_taking(db, events, echo_suppression=echo, room=room)
                        jobs = await self.deliverer.jobs_for(db, taken)
                    if consumed:
                        # Planned for the outbox as it is now: a plan kept from when it was
                        # nearly empty reads the whole table for every batch.
                        await plan_for_now(db)
                        await db.execute(outbox.stamping(dialect.name(db), "consumed_at"), {"ids": consumed, "at": utcnow()})
                return taken, jobs
            except (OperationalError, DBAPIError) as exc:
                if attempt == 5 or getattr(exc, "connection_invalidated", False):
                    raise
                log.info("sync worker: recording a batch conflicted (%s); retrying", type(getattr(exc, "orig", exc)).__name__)
                await asyncio.sleep(0.05 * attempt)

    async def _consume(self, consumer: AIOKafkaConsumer, watch: kafka.BrokerWatch, offsets: Offsets) -> None:
        loop = asyncio.get_running_loop()
        unassigned_since: float | None = None
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=self.settings.relay_batch_size)
            if await watch.look(consumer):  # raises PartitionsChanged: the consumer is made again
                continue  # read again from the start what this batch skipped of the new broker
            if not consumer.assignment():
                # The topic may be gone with a broker that lost its memory: it is made again here
                # too, not only by the relay, so the group is assigned its partitions once more.
                unassigned_since = unassigned_since or loop.time()
                if loop.time() - unassigned_since > UNASSIGNED_RECHECK:
                    prefix = self.settings.kafka_topic_prefix
                    await kafka.ensure_topics(self.settings, self.bootstrap, {prefix + PROFILE_TOPIC: self.settings.kafka_profile_partitions})
                    unassigned_since = loop.time()
            else:
                unassigned_since = None
            if not batch:
                offsets.forget(await kafka.rewind_past_the_end(consumer))
                if offsets.recorded:
                    async with self.busy:
                        await offsets.commit()  # nothing more came: what was recorded is committed now
                continue
            async with self.busy:
                events = []
                consumed: list[int] = []
                positions = {}
                for tp, messages in batch.items():
                    for message in messages:
                        consumed.extend(_outbox_id(message.headers))
                        event = parse(message.value)
                        if event is None:
                            log.error("sync worker: skipped an unreadable event at %s[%s]@%s", tp.topic, tp.partition, message.offset)
                            self.metrics.events_consumed.labels("unreadable").inc()
                            continue
                        events.append(event)
                        self.metrics.events_consumed.labels(event.type).inc()
                    positions[tp] = messages[-1].offset + 1
                taken: Taken | None = None
                if events or consumed:
                    taken, jobs = await whole(self._record(events, consumed))
                    if taken is not None and self.deliverer is not None:
                        self.deliverer.start(jobs, superseded=taken.in_flight)
                # Only now is the work durable: its offsets may be committed.
                offsets.add(positions)
                if offsets.due():
                    await offsets.commit()
            if self.wake is not None and (taken is None or taken.left):
                self.wake.set()  # rows are due that this worker did not take: the deliverer claims them


async def _last_commit(offsets: Offsets) -> None:
    """Commit what was recorded as the worker stops, for a few seconds at most (a broker that is
    gone would hold the shutdown): what is left uncommitted is read again by the next owner."""
    try:
        async with asyncio.timeout(LAST_COMMIT_SECONDS):
            await offsets.commit()
    except Exception as exc:
        log.warning("sync worker: could not commit the offsets of what was recorded as it stopped: %s: %s", type(exc).__name__, exc)
