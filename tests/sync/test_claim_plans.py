"""The worker's claims are cheap however large the delivery store grows: on Postgres they are
planned on the partial indexes of due rows, also in the generic plans Postgres caches for the
prepared statements the driver reuses (where a state passed as a parameter would leave only a
scan and sort of the whole table). And the fan-out's statements are prepared once and reused,
whatever the size of the batch."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest
from sqlalchemy import event, func, select

from identity.appkeys import DB, ENGINE
from identity.db.models import utcnow
from schemas.events import ProfileChanged
from sync import fanout
from sync.endpoints import Room
from tests.support import Hub
from tests.sync.conftest import add_member
from tests.sync.helpers import add_people, engines, link_directly
from tests.sync.receivers import Receivers


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:
    return kafka_settings | {"sync_in_process": False}


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        return f"'{value.isoformat()}'"
    assert isinstance(value, str), type(value)
    return "'" + value.replace("'", "''") + "'"


async def _generic_plan(hub: Hub, statement: str, parameters: tuple[Any, ...]) -> str:
    """The plan Postgres uses for ``statement`` once it has switched to a generic plan, with
    sequential scans made a last resort (the test tables are too small for the planner to prefer
    an index on its own)."""
    async with hub.app[ENGINE].connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        async with raw.transaction():
            await raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await raw.execute("SET LOCAL enable_seqscan = off")
            await raw.execute(f"PREPARE claim AS {statement}")
            rows = await raw.fetch(f"EXPLAIN EXECUTE claim({', '.join(_literal(p) for p in parameters)})")
            await raw.execute("DEALLOCATE claim")
            await raw.execute("ROLLBACK")  # nothing the EXPLAIN'd claim did is kept
        return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # generic plans are Postgres's
async def test_claims_use_the_due_indexes_in_generic_plans(hub: Hub, receivers: Receivers) -> None:
    await add_member(hub, receivers, "store")
    seen: list[tuple[str, tuple[Any, ...]]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, tuple(parameters or ())))

    engine = hub.app[ENGINE].sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        async with aiohttp.ClientSession() as http:
            deliverer, notices = engines(hub, http)
            await deliverer.endpoints.refresh(force=True)
            await deliverer.claim(10)
            await notices.claim(10)
            await deliverer.claim(10, probe=True)
            await notices.claim(10, probe=True)
    finally:
        event.remove(engine, "before_cursor_execute", capture)

    [deliveries] = [s for s in seen if s[0].lstrip().startswith("WITH due AS")]
    plan = await _generic_plan(hub, *deliveries)
    assert "ix_deliveries_due" in plan, plan
    [notice] = [s for s in seen if "FROM notices" in s[0] and s[0].lstrip().startswith("UPDATE")]
    plan = await _generic_plan(hub, *notice)
    assert "ix_notices_due" in plan, plan
    # The look an idle poll takes before a claim reads the same indexes.
    [probe] = [s for s in seen if s[0].lstrip().startswith("SELECT") and "FROM deliveries" in s[0]]
    assert "ix_deliveries_due" in await _generic_plan(hub, *probe)
    [probe] = [s for s in seen if s[0].lstrip().startswith("SELECT") and "FROM notices" in s[0]]
    assert "ix_notices_due" in await _generic_plan(hub, *probe)


async def test_an_idle_poll_reads_once_and_claims_only_what_is_due(hub: Hub, receivers: Receivers) -> None:
    """A poll that finds nothing due costs one read, no transaction and no claim; once rows are
    due, the same poll claims them."""
    store = await add_member(hub, receivers, "store")
    subs = await add_people(hub, 2)
    await link_directly(hub, subs, store.rp.client_id)
    engine = hub.app[ENGINE].sync_engine
    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append(" ".join(statement.split()))

    async with aiohttp.ClientSession() as http:
        deliverer, notices = engines(hub, http)
        await deliverer.endpoints.refresh(force=True)
        for kind in (deliverer, notices):
            seen.clear()
            event.listen(engine, "before_cursor_execute", capture)
            try:
                assert await kind.claim(10, probe=True) == []
            finally:
                event.remove(engine, "before_cursor_execute", capture)
            assert len(seen) == 1 and seen[0].startswith("SELECT") and " LIMIT " in seen[0], seen
        events = [ProfileChanged(id=f"e{sub}", sub=sub, version=2, changed=["given_name"], channel="support", occurred_at=utcnow()) for sub in subs]
        async with hub.app[DB].begin() as db:
            await fanout.record(db, events, echo_suppression=True)
        claimed = await deliverer.claim(10, probe=True)
        assert sorted(job.sub for job in claimed) == sorted(subs)
        assert await deliverer.claim(10, probe=True) == []  # leased now: not due


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # prepared statements are reused on Postgres
async def test_the_fanouts_statements_are_one_text_whatever_the_batchs_size(hub: Hub, receivers: Receivers) -> None:
    """Batches of 1, 3 and 6 people send the same statement texts: each is parsed and planned once
    per connection and reused (an IN list or a multi-row VALUES of each size would be a new
    statement for Postgres every time the batch's size changes, which it does with every poll)."""
    store = await add_member(hub, receivers, "store")
    subs = await add_people(hub, 10)
    await link_directly(hub, subs, store.rp.client_id)
    async with hub.app[DB]() as db:
        now = await db.scalar(select(func.now()))
    engine = hub.app[ENGINE].sync_engine
    texts: list[set[str]] = []
    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]
        deliverer.accepting = True
        await deliverer.endpoints.refresh(force=True)
        for batch in (subs[:1], subs[1:4], subs[4:10]):
            seen: set[str] = set()

            def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool, seen: set[str] = seen) -> None:
                seen.add(statement)

            event.listen(engine, "before_cursor_execute", capture)
            try:
                room = deliverer.room()
                assert room is not None
                events = [ProfileChanged(id=f"e{sub}", sub=sub, version=2, changed=["given_name"], channel="support", occurred_at=now) for sub in batch]
                room = Room(until=room.until, room={k: len(batch) - 1 for k in room.room})  # one left for a claim
                async with hub.app[DB].begin() as db:
                    taken = await fanout.record_taking(db, events, echo_suppression=True, room=room)
                    jobs = await deliverer.jobs_for(db, taken)
                claimed = await deliverer.claim(10)
            finally:
                event.remove(engine, "before_cursor_execute", capture)
            assert taken.count == len(batch) and len(jobs) == len(batch) - 1 and len(claimed) == 1
            texts.append(seen)
    assert texts[0] == texts[1] == texts[2], [sorted(t) for t in texts]
