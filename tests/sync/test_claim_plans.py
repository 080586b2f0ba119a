"""The worker's claims are cheap however large the delivery store grows: on Postgres they are
planned on the partial indexes of due rows, also in the generic plans Postgres caches for the
prepared statements the driver reuses (where a state passed as a parameter would leave only a
scan and sort of the whole table). The same holds for the look an idle poll takes, and for the
outbox's reads and stamps, however many rows were settled or published before. And the fan-out's
statements are prepared once and reused, whatever the size of the batch."""

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
from sync.metrics import SyncMetrics
from sync.relay import Relay
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
    if isinstance(value, list):
        return "'{" + ",".join(str(v) for v in value) + "}'"
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


def _capturing(engine: Any, seen: list[tuple[str, tuple[Any, ...]]]) -> Any:
    """Record in ``seen`` each statement ``engine`` sends, with its parameters, from now on;
    return the listener (for ``event.remove``)."""

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, tuple(parameters or ())))

    event.listen(engine, "before_cursor_execute", capture)
    return capture


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # generic plans are Postgres's
async def test_claims_use_the_due_indexes_in_generic_plans(hub: Hub, receivers: Receivers) -> None:
    await add_member(hub, receivers, "store")
    seen: list[tuple[str, tuple[Any, ...]]] = []
    engine = hub.app[ENGINE].sync_engine
    capture = _capturing(engine, seen)
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


async def _plan_among(
    hub: Hub, rows: list[str], before: list[tuple[str, tuple[Any, ...]]], statement: tuple[str, tuple[Any, ...]], *, kept: bool = False
) -> str:
    """The plan Postgres makes for ``statement`` (as the driver sent it, with its parameters)
    among ``rows`` (SQL), after the statements the code ran before it in its transaction
    (``before``); all of it rolled back. The tables are analyzed with the rows written; or
    (``kept``) before, the outbox empty, with the statement prepared and run once then, as a
    connection's prepared statement keeps a plan made when a new hub's tables were small."""
    async with hub.app[ENGINE].connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        transaction = raw.transaction()
        await transaction.start()
        try:
            if not kept:
                for sql in rows:
                    await raw.execute(sql)
            await raw.execute("ANALYZE deliveries, outbox")
            if kept:
                await raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # what it may come to
            for sql, parameters in before:
                await raw.fetch(sql, *parameters)
            await raw.execute(f"PREPARE kept AS {statement[0]}")
            arguments = ", ".join(_literal(p) for p in statement[1])
            if kept:
                await raw.execute(f"EXECUTE kept({arguments})")
                for sql in rows:
                    await raw.execute(sql)
            return "\n".join(r[0] for r in await raw.fetch(f"EXPLAIN EXECUTE kept({arguments})"))
        finally:
            await transaction.rollback()
            await raw.execute("DEALLOCATE kept")  # a session's, not undone with its transaction


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_idle_polls_look_reads_the_due_index_among_many_settled_rows(hub: Hub, receivers: Receivers) -> None:
    """Postgres cannot tell how many deliveries are pending (``wanted_version >
    delivered_version`` has no statistics) and guesses a third: asked for any one due row, it
    would read the table from its start, and through all of it when none is due."""
    await add_member(hub, receivers, "store")
    await add_people(hub, 1)
    seen: list[tuple[str, tuple[Any, ...]]] = []
    engine = hub.app[ENGINE].sync_engine
    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]
        await deliverer.endpoints.refresh(force=True)
        capture = _capturing(engine, seen)
        try:
            assert await deliverer.claim(10, probe=True) == []
        finally:
            event.remove(engine, "before_cursor_execute", capture)
    [probe] = seen
    settled = (
        "INSERT INTO deliveries (service_id, account_id, channel, wanted_version, delivered_version, changed, snapshot, generation,"
        " origin, origin_self, state, attempts, next_attempt_at) SELECT (SELECT min(id) FROM services), (SELECT min(id) FROM accounts),"
        " 'c' || g, 3, 3, 0, false, 1, 'person', false, 'active', 0, now() - interval '1 hour' FROM generate_series(1, 20000) g"
    )
    plan = await _plan_among(hub, [settled], [], probe)
    assert "ix_deliveries_due" in plan and "Seq Scan" not in plan, plan


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_the_outbox_is_read_and_stamped_through_its_indexes_however_much_was_published(hub: Hub) -> None:
    """The relay reads the few unpublished rows through an index scan (which skips the entries
    of rows published since the last vacuum once it has met them, where a bitmap scan reads each
    of them and its heap page every time), and the worker stamps the rows it consumed by their
    key: planned for the outbox as it is, not as it was when a plan was kept (empty, where
    reading the whole table is cheapest)."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    engine = hub.app[ENGINE].sync_engine
    capture = _capturing(engine, seen)
    try:
        relay = Relay(hub.settings, hub.app[DB], "", idempotent=False, metrics=SyncMetrics())
        assert await relay.publish_batch() == 0  # nothing to publish (it has no producer): its read is looked at
        worker = fanout.FanOut(hub.settings, hub.app[DB], "", metrics=SyncMetrics())
        await worker._record([], [1, 2, 3])  # stamps the outbox rows it consumed
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statements = [(sql, parameters) for sql, parameters in seen if not sql.lstrip().startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    read = next(i for i, (sql, _) in enumerate(statements) if "FROM outbox" in sql and sql.lstrip().startswith("SELECT"))
    stamp = next(i for i, (sql, _) in enumerate(statements) if "consumed_at" in sql)
    relays, workers = statements[:read], statements[read + 1 : stamp]
    published = (
        "INSERT INTO outbox (topic, key, event_type, payload, created_at, published_at, consumed_at)"
        " SELECT 't', 'k' || g, 'profile.changed', '{}', now(), now(), now() FROM generate_series(1, 20000) g"
    )
    unpublished = "INSERT INTO outbox (topic, key, event_type, payload, created_at) SELECT 't', 'k' || g, 'profile.changed', '{}', now() FROM generate_series(1, 50) g"
    plan = await _plan_among(hub, [published, unpublished], relays, statements[read], kept=True)
    assert "Index Scan using ix_outbox_" in plan and "Bitmap" not in plan and "Seq Scan" not in plan, plan
    plan = await _plan_among(hub, [published], workers, statements[stamp], kept=True)
    assert "outbox_pkey" in plan and "Seq Scan" not in plan, plan


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
