"""The per-minute sync rollups behind the console's charts, on SQLite and Postgres: outcomes of
several recordings add up in their minute (concurrent ones too), the backlog is sampled into the
current minute and back to 0 once drained, a chart's window reads them in steps, and the cleanup
job prunes them after their retention."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from identity import rollups
from identity.appkeys import DB
from identity.db.cleanup import purge_expired
from identity.db.models import Account, Delivery, Service, SyncMinute
from tests.support import Hub


async def _ids(hub: Hub) -> tuple[int, int]:
    await hub.add_service(name="Store", webhook_url="https://store.example/hook")
    await hub.add_user()
    async with hub.app[DB]() as db:
        service_id = await db.scalar(select(Service.id))
        account_id = await db.scalar(select(Account.id))
    assert service_id is not None and account_id is not None
    return service_id, account_id


async def test_outcomes_add_up_per_minute_and_read_back_as_a_window(hub: Hub) -> None:
    service_id, account_id = await _ids(hub)
    now = dt.datetime(2026, 12, 6, 1, 30, 20, tzinfo=dt.UTC)

    async def record(ok: int, failed: int, dead: int, at: dt.datetime, latency: float) -> None:
        tally = rollups.Tally()
        for _ in range(ok):
            tally.ok(service_id, at, latency)
        for i in range(failed):
            tally.failed(service_id, at, dead=i < dead)
        async with hub.app[DB].begin() as db:
            await rollups.add(db, tally)

    # Two recordings at once into the same minute, and one a minute earlier.
    await asyncio.gather(record(30, 0, 0, now, 0.2), record(0, 10, 2, now + dt.timedelta(seconds=30), 0.0))
    await record(5, 0, 0, now - dt.timedelta(minutes=1), 20.0)

    async with hub.app[DB].begin() as db:
        db.add(Delivery(service_id=service_id, account_id=account_id, channel="webhook", wanted_version=2, delivered_version=1,
                        origin="person", next_attempt_at=now))
    async with hub.app[DB].begin() as db:
        waiting = await rollups.sample_backlog(db, now)
    assert waiting == {service_id}

    async with hub.app[DB]() as db:
        hour = await rollups.series(db, service_id, rollups.WINDOWS["hour"], now)
        day = await rollups.series(db, service_id, rollups.WINDOWS["day"], now)
    assert len(hour) == 60 and len(day) == 96
    last, before = hour[-1], hour[-2]
    assert (last.ok, last.failed, last.dead, last.backlog) == (30, 10, 2, 1)
    assert last.failure_rate == 0.25 and last.per_minute == 40
    assert last.p50 is not None and 0.1 < last.p50 <= 0.25
    assert (before.ok, before.failed, before.backlog) == (5, 0, None)
    assert before.p99 is not None and 10 < before.p99 <= 30
    assert sum(p.ok for p in hour[:-2]) == 0 and all(p.p50 is None for p in hour[:-2])
    # The day's last 15-minute step holds both minutes.
    assert (day[-1].ok, day[-1].failed, day[-1].minutes) == (35, 10, 15) and day[-1].per_minute == 3

    # Drained: the next sample writes 0 for the service that had a backlog.
    async with hub.app[DB].begin() as db:
        await db.execute(Delivery.__table__.update().values(delivered_version=2))
    async with hub.app[DB].begin() as db:
        assert await rollups.sample_backlog(db, now + dt.timedelta(seconds=5), waiting) == set()
    async with hub.app[DB]() as db:
        assert (await rollups.series(db, service_id, rollups.WINDOWS["hour"], now))[-1].backlog == 0

    # Pruned by the cleanup job once past their retention, and not before.
    async with hub.app[DB].begin() as db:
        kept = await purge_expired(db, throttle_window=900, rollup_retention=dt.timedelta(days=2), now=now + dt.timedelta(days=1))
        pruned = await purge_expired(db, throttle_window=900, rollup_retention=dt.timedelta(days=2), now=now + dt.timedelta(days=2))
        left = await db.scalar(select(func.count()).select_from(SyncMinute))
    assert kept["sync_minutes"] == 0 and pruned["sync_minutes"] == 2 and left == 0


async def test_a_removed_services_outcomes_are_dropped_not_a_failure(hub: Hub) -> None:
    service_id, _ = await _ids(hub)
    now = dt.datetime(2026, 12, 6, 1, 30, tzinfo=dt.UTC)
    tally = rollups.Tally()
    tally.ok(service_id, now, 0.1)
    tally.failed(service_id + 1000, now)  # a service removed while its outcome was in flight
    async with hub.app[DB].begin() as db:
        await rollups.add(db, tally)
        assert await rollups.sample_backlog(db, now, previous={service_id + 1000}) == set()
    async with hub.app[DB]() as db:
        rows = (await db.execute(select(SyncMinute.service_id, SyncMinute.ok, SyncMinute.failed))).all()
    assert [tuple(r) for r in rows] == [(service_id, 1, 0)]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQLite takes no row locks
async def test_counting_outcomes_holds_a_service_only_against_its_removal(hub: Hub) -> None:
    """While a recording adds its counts, the services counted are held against removal only: a
    webhook's health recorded meanwhile by another worker (an UPDATE of the service's row) does
    not wait for it, so two workers recording outcomes for the same services never deadlock."""
    service_id, _ = await _ids(hub)
    tally = rollups.Tally()
    tally.ok(service_id, dt.datetime(2026, 12, 6, 1, 30, tzinfo=dt.UTC), 0.1)
    async with hub.app[DB].begin() as recording:
        await rollups.add(recording, tally)  # holds the service until it commits
        async with hub.app[DB].begin() as health:
            # A lock conflict would fail at once here rather than wait: no waiting is allowed.
            await health.execute(text("SET LOCAL lock_timeout = '100ms'"))
            await health.execute(update(Service).where(Service.id == service_id).values(webhook_last_error="timed out"))
        with pytest.raises(DBAPIError, match="lock timeout"):
            async with hub.app[DB].begin() as removal:
                await removal.execute(text("SET LOCAL lock_timeout = '100ms'"))
                await removal.execute(delete(Service).where(Service.id == service_id))
