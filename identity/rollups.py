"""Per-minute sync rollups (``sync_minutes``): the time series behind the console's sync-health
charts, one row per service and minute, never raw rows.

The delivery engine adds what it records (:func:`add`), in the transaction that records the
outcomes: a rollup counts exactly the outcomes that were committed, and a batch rolled back is
counted when it is recorded again. Every ``serve``, ``relay`` and ``worker`` process samples each
service's backlog into the current minute every 5 s (:func:`sample_backlog`). Latency (from a change's commit, or a notice's writing,
to the service's answer) is a small fixed histogram per minute (``LATENCY_BOUNDS``), so minutes
add up into any step and p50/p99 are read from the sum (:func:`quantile`). Rows are upserted in
(minute, service) order everywhere, so concurrent writers never deadlock on them. The cleanup job
prunes them after ``sync_rollup_retention_days``. Functions take the caller's session."""

from __future__ import annotations

import bisect
import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db import dialect
from identity.db.models import (
    ACTIVE,
    LATENCY_BOUNDS,
    LATENCY_COLUMNS,
    PENDING,
    Delivery,
    Notice,
    Service,
    SyncMinute,
)
from identity.db.upsert import insert_for, insert_on

BUCKETS = len(LATENCY_COLUMNS)


def minute_of(at: dt.datetime) -> dt.datetime:
    return at.replace(second=0, microsecond=0)


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency: the first bound at or above it (the last bucket: none)."""
    return bisect.bisect_left(LATENCY_BOUNDS, seconds)


@dataclass
class Counts:
    ok: int = 0
    failed: int = 0
    dead: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def answered(self, seconds: float | None) -> None:
        self.ok += 1
        if seconds is not None:
            self.latency[bucket_of(max(0.0, seconds))] += 1


class Tally:
    """Outcomes of one recording, per (service, minute), to add in one go."""

    def __init__(self) -> None:
        self.rows: dict[tuple[dt.datetime, int], Counts] = defaultdict(Counts)

    def ok(self, service_id: int, at: dt.datetime, latency: float | None) -> None:
        self.rows[(minute_of(at), service_id)].answered(latency)

    def failed(self, service_id: int, at: dt.datetime, *, dead: bool = False) -> None:
        counts = self.rows[(minute_of(at), service_id)]
        counts.failed += 1
        counts.dead += int(dead)


COUNTS = ("ok", "failed", "dead", *LATENCY_COLUMNS)


def _adding(db: AsyncSession) -> Any:
    """``INSERT … ON CONFLICT DO UPDATE`` adding a row's counts to its minute's, with bound
    parameters: built once per database, compiled once, run for many rows at once."""
    return _adding_on(dialect.name(db))


@functools.cache
def _adding_on(dialect_name: str) -> Any:
    table = SyncMinute.__table__
    stmt = insert_on(dialect_name, table).values({name: bindparam(name) for name in ("service_id", "minute", *COUNTS)})
    return stmt.on_conflict_do_update(
        index_elements=["service_id", "minute"], set_={name: table.c[name] + stmt.excluded[name] for name in COUNTS}
    )


async def add(db: AsyncSession, tally: Tally) -> None:
    """Add a recording's counts to their minutes, its rows in (minute, service) order (the order
    every writer of these rows takes their locks in)."""
    if not tally.rows:
        return
    existing = await _existing(db, {service_id for _, service_id in tally.rows})
    rows = [
        {"service_id": service_id, "minute": minute, "ok": counts.ok, "failed": counts.failed, "dead": counts.dead}
        | dict(zip(LATENCY_COLUMNS, counts.latency, strict=True))
        for (minute, service_id), counts in sorted(tally.rows.items())
        if service_id in existing  # one removed meanwhile: its outcomes count for nothing
    ]
    if rows:
        await db.execute(_adding(db), rows)


async def _existing(db: AsyncSession, service_ids: set[int]) -> set[int]:
    """Which of these services still exist, held (``FOR KEY SHARE``) until the caller commits: a
    service removed meanwhile is left out rather than failing the caller's transaction on the
    foreign key, and one being removed waits for it."""
    found = await db.scalars(_holding(dialect.name(db)), {"ids": sorted(service_ids)})
    return set(found)


@functools.cache
def _holding(dialect_name: str) -> Any:
    s = Service.__table__.c
    # FOR KEY SHARE (read=True): a removal waits for it, an update of the service's columns does not.
    return select(s.id).where(dialect.among(dialect_name, s.id, "ids")).with_for_update(read=True, key_share=True)


async def backlogs(db: AsyncSession) -> dict[int, int]:
    """Each service's waiting deliveries and notices, now (services with none are left out)."""
    d, n = Delivery.__table__.c, Notice.__table__.c
    waiting: dict[int, int] = defaultdict(int)
    for service_id, count in await db.execute(
        select(d.service_id, func.count()).where(d.state == ACTIVE, d.wanted_version > d.delivered_version).group_by(d.service_id)
    ):
        waiting[service_id] += count
    for service_id, count in await db.execute(select(n.service_id, func.count()).where(n.state == PENDING).group_by(n.service_id)):
        waiting[service_id] += count
    return dict(waiting)


async def sample_backlog(db: AsyncSession, now: dt.datetime, previous: Iterable[int] = ()) -> set[int]:
    """Write each service's backlog into the current minute: the services that have one, and
    those of ``previous`` (that had one at the last sample) with 0. Returns the services that
    have one now, for the next sample."""
    waiting = await backlogs(db)
    minute = minute_of(now)
    rows = [
        {"service_id": service_id, "minute": minute, "backlog": waiting.get(service_id, 0)}
        for service_id in sorted(await _existing(db, set(waiting) | set(previous)))
    ]
    if rows:
        stmt = insert_for(db, SyncMinute.__table__).values(service_id=bindparam("service_id"), minute=bindparam("minute"), backlog=bindparam("backlog"))
        await db.execute(stmt.on_conflict_do_update(index_elements=["service_id", "minute"], set_={"backlog": stmt.excluded.backlog}), rows)
    return set(waiting)


def quantile(histogram: list[int], q: float) -> float | None:
    """The ``q`` quantile of a latency histogram, interpolated within its bucket (the last,
    unbounded bucket answers its lower bound); None when it is empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS[i - 1] if i else 0.0
            if i == len(LATENCY_BOUNDS):
                return low
            return low + (LATENCY_BOUNDS[i] - low) * max(0.0, rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-1]


@dataclass(frozen=True)
class Point:
    """One step of a chart: its start and length in minutes, attempts answered and failed, rows given up, the last
    backlog sampled in it (None: none sampled), and p50/p99 latency in seconds (None: no answer)."""

    at: dt.datetime
    minutes: int
    ok: int
    failed: int
    dead: int
    backlog: int | None
    p50: float | None
    p99: float | None

    @property
    def per_minute(self) -> float:
        return (self.ok + self.failed) / self.minutes

    @property
    def failure_rate(self) -> float | None:
        tried = self.ok + self.failed
        return self.failed / tried if tried else None


@dataclass(frozen=True)
class Window:
    """A chart's span: ``last hour`` in 1-minute steps, ``last day`` in 15-minute steps."""

    name: str
    span: dt.timedelta
    step: dt.timedelta


WINDOWS = {
    "hour": Window("Last hour", dt.timedelta(hours=1), dt.timedelta(minutes=1)),
    "day": Window("Last day", dt.timedelta(days=1), dt.timedelta(minutes=15)),
}


async def series(db: AsyncSession, service_id: int, window: Window, now: dt.datetime) -> list[Point]:
    """The service's rollups over ``window`` up to ``now``, one point per step (empty steps too)."""
    step_seconds = int(window.step.total_seconds())
    end = minute_of(now) + dt.timedelta(minutes=1)
    start = end - window.span
    rows = (
        await db.execute(select(SyncMinute).where(SyncMinute.service_id == service_id, SyncMinute.minute >= start, SyncMinute.minute < end))
    ).scalars()
    steps = int(window.span.total_seconds()) // step_seconds
    sums = [[0, 0, 0] for _ in range(steps)]
    hists = [[0] * BUCKETS for _ in range(steps)]
    backlog: list[tuple[dt.datetime, int] | None] = [None] * steps
    for row in rows:
        i = int((row.minute - start).total_seconds()) // step_seconds
        if not 0 <= i < steps:
            continue
        sums[i][0] += row.ok
        sums[i][1] += row.failed
        sums[i][2] += row.dead
        for b, name in enumerate(LATENCY_COLUMNS):
            hists[i][b] += getattr(row, name)
        if row.backlog is not None and (backlog[i] is None or backlog[i][0] < row.minute):  # type: ignore[index]
            backlog[i] = (row.minute, row.backlog)
    return [
        Point(
            at=start + i * window.step,
            minutes=step_seconds // 60,
            ok=sums[i][0],
            failed=sums[i][1],
            dead=sums[i][2],
            backlog=backlog[i][1] if backlog[i] is not None else None,  # type: ignore[index]
            p50=quantile(hists[i], 0.5),
            p99=quantile(hists[i], 0.99),
        )
        for i in range(steps)
    ]
