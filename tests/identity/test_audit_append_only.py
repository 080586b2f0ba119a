"""The audit trail is append-only in the database itself: an UPDATE or DELETE of
``audit_records`` from ordinary code is refused (so is TRUNCATE on Postgres); only the retention
purge, inside its own transaction, deletes records past their period, and the way is closed
again once it commits. Erasing an account keeps the records that name it."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from identity import purge
from identity.appkeys import DB
from identity.db.models import AuditRecord, utcnow
from identity.support import audit
from tests.support import Hub


async def _records(hub: Hub, *, ages_in_days: tuple[int, ...] = (0,)) -> list[int]:
    async with hub.app[DB].begin() as db:
        rows = [audit.record(db, actor_kind="agent", actor="agent-sub", action="support.view", account_sub="ann-sub", reason="Caller asked") for _ in ages_in_days]
        for row, age in zip(rows, ages_in_days, strict=True):
            row.at = utcnow() - dt.timedelta(days=age)
        await db.flush()
        return [row.id for row in rows]


async def _count(hub: Hub) -> int:
    async with hub.app[DB]() as db:
        return int(await db.scalar(select(func.count()).select_from(AuditRecord)) or 0)


@pytest.mark.parametrize(
    "statement",
    [
        update(AuditRecord).values(reason="nothing to see"),
        update(AuditRecord).values(account_sub=None),
        delete(AuditRecord),
        text("DELETE FROM audit_records"),
        text("UPDATE audit_records SET actor = 'someone else'"),
    ],
    ids=["update-reason", "update-sub", "delete", "raw-delete", "raw-update"],
)
async def test_ordinary_code_cannot_change_or_delete_audit_records(hub: Hub, statement: object) -> None:
    (record_id,) = await _records(hub)
    with pytest.raises(DBAPIError, match="append-only"):
        async with hub.app[DB].begin() as db:
            await db.execute(statement)  # type: ignore[call-overload]
    async with hub.app[DB]() as db:
        kept = await db.get(AuditRecord, record_id)
        assert kept is not None and (kept.reason, kept.actor, kept.account_sub) == ("Caller asked", "agent-sub", "ann-sub")


async def test_an_orm_change_to_a_loaded_record_is_refused(hub: Hub) -> None:
    (record_id,) = await _records(hub)
    with pytest.raises(DBAPIError, match="append-only"):
        async with hub.app[DB].begin() as db:
            record = await db.get(AuditRecord, record_id)
            assert record is not None
            record.reason = "rewritten"
    with pytest.raises(DBAPIError, match="append-only"):
        async with hub.app[DB].begin() as db:
            record = await db.get(AuditRecord, record_id)
            await db.delete(record)
    assert await _count(hub) == 1


async def test_truncate_is_refused_on_postgres(hub: Hub) -> None:
    if not hub.settings.resolved_database_url.startswith("postgresql"):
        pytest.skip("SQLite has no TRUNCATE (its DELETE without WHERE is refused above)")
    await _records(hub)
    with pytest.raises(DBAPIError, match="append-only"):
        async with hub.app[DB].begin() as db:
            await db.execute(text("TRUNCATE audit_records"))
    assert await _count(hub) == 1


async def test_the_retention_purge_deletes_old_records_and_closes_the_way_behind_it(hub: Hub) -> None:
    period = hub.settings.audit_retention_days
    recent, old = await _records(hub, ages_in_days=(period - 1, period + 1))
    assert (await purge.run(hub.app[DB], hub.settings))["audit_records"] == 1
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(AuditRecord.id))).all() == [recent]
    # The purge's permission ended with its transaction: the next statement is ordinary again.
    with pytest.raises(DBAPIError, match="append-only"):
        async with hub.app[DB].begin() as db:
            await db.execute(delete(AuditRecord))
    assert await _count(hub) == 1
    assert old != recent


async def test_a_failed_purge_leaves_the_way_closed(hub: Hub) -> None:
    await _records(hub, ages_in_days=(hub.settings.audit_retention_days + 1,))

    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        async with hub.app[DB].begin() as db, purge._audit_purge(db):
            assert (await db.execute(delete(AuditRecord))).rowcount == 1
            raise Stop  # the purge fails while the way is open: its transaction rolls back
    assert await _count(hub) == 1
    with pytest.raises(DBAPIError, match="append-only"):
        async with hub.app[DB].begin() as db:
            await db.execute(delete(AuditRecord))
