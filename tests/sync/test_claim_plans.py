"""The worker's claims are cheap however large the delivery store grows: on Postgres they are
planned on the partial indexes of due rows, also in the generic plans Postgres caches for the
prepared statements the driver reuses (where a state passed as a parameter would leave only a
scan and sort of the whole table)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest
from sqlalchemy import event

from identity.appkeys import ENGINE
from tests.support import Hub
from tests.sync.conftest import add_member
from tests.sync.helpers import engines
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
    finally:
        event.remove(engine, "before_cursor_execute", capture)

    [deliveries] = [s for s in seen if s[0].lstrip().startswith("WITH due AS")]
    plan = await _generic_plan(hub, *deliveries)
    assert "ix_deliveries_due" in plan, plan
    [notice] = [s for s in seen if "FROM notices" in s[0] and s[0].lstrip().startswith("UPDATE")]
    plan = await _generic_plan(hub, *notice)
    assert "ix_notices_due" in plan, plan
