"""The migrations create exactly what the models declare, every table, index and column (on
SQLite and Postgres): a migration that forgets what a model gained fails here."""

from __future__ import annotations

import sqlite3
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from identity.db.engine import create_engine
from identity.db import migrate
from identity.db.migrate import alembic_config, head_revision, upgrade
from identity.db.models import Base
from identity.settings import Settings

#: Made by a migration on purpose and declared by no model: SQLite's gate for the retention
#: purge, the only way through the triggers that keep audit records append-only there.
NOT_A_MODEL = {"audit_purge_gate"}


async def test_the_migrations_match_the_models(database_url: str) -> None:
    def differences(connection: Any) -> list[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLite cannot reflect expression indexes
            diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        return [d for d in diffs if not (d[0] == "remove_table" and d[1].name in NOT_A_MODEL)]

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


def _row(connection: Any, table: str, given: dict[str, Any]) -> None:
    """A row of ``table`` as the schema stands at this revision: ``given``, and a placeholder
    for every other column that needs a value."""
    run = getattr(connection, "exec_driver_sql", None) or connection.execute  # SQLAlchemy's or sqlite3's
    values = dict(given)
    for _, name, kind, notnull, default, pk in run(f"PRAGMA table_info({table})"):
        if name in values or pk or not notnull or default is not None:
            continue
        kind = (kind or "").upper()
        values[name] = 0 if ("INT" in kind or "BOOL" in kind) else "2026-01-01 00:00:00" if ("DATE" in kind or "TIME" in kind) else "[]" if "JSON" in kind else "x"
    names = ", ".join(values)
    run(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' for _ in values)})", tuple(values.values()))


async def _hub_at_0007(tmp_path: Path) -> Any:
    """An embedded hub's database at revision 0007 holding one account, service and link (and a
    link to a service that is not there, as a hand-edited database may hold), and its engine."""
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}", secret_key="s" * 40, issuer="http://127.0.0.1:1")
    engine = create_engine(settings)
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0007"))
    async with engine.begin() as connection:
        await connection.run_sync(_row, "accounts", {"id": 1, "sub": "s-1", "email": "ann@example.com"})
        await connection.run_sync(_row, "services", {"id": 1, "client_id": "store", "name": "Store"})
        await connection.run_sync(_row, "links", {"id": 1, "account_id": 1, "service_id": 1})
    hand_edited = sqlite3.connect(tmp_path / "hub.db")  # foreign keys off, as in sqlite3's shell
    with hand_edited:
        _row(hand_edited, "links", {"id": 2, "account_id": 1, "service_id": 99})
    hand_edited.close()
    return engine


async def _state(engine: Any) -> tuple[Any, ...]:
    async with engine.connect() as connection:
        return (
            (await connection.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar(),
            (await connection.exec_driver_sql("SELECT id, account_id, service_id FROM links ORDER BY id")).all(),
            (await connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'")).all(),
            (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar(),
        )


async def test_upgrading_an_embedded_hub_keeps_the_rows_that_refer_to_a_rebuilt_table(tmp_path: Path) -> None:
    """SQLite alters a column by building its table anew: with foreign keys on, dropping the old
    ``services`` table (revision 0008) deleted every link, token and delivery that referred to it.
    A hub migrated from 0007 by ``onesignin migrate``'s path keeps them (a reference broken before
    the migrations stays as it was), and foreign keys are on again for the hub's work."""
    engine = await _hub_at_0007(tmp_path)
    try:
        assert await upgrade(engine) == head_revision()
        assert await _state(engine) == (head_revision(), [(1, 1, 1), (2, 1, 99)], [], 1)
    finally:
        await engine.dispose()


async def test_a_migration_that_fails_on_an_embedded_hub_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The migrations run in one transaction on SQLite too (its driver would commit each rebuilt
    table at once): a failure, here references the migrations would break, leaves the database
    at its revision with its rows and no half-built table, and the next try succeeds."""
    engine = await _hub_at_0007(tmp_path)
    try:
        found = iter([Counter(), Counter({("links", "services"): 1})])
        monkeypatch.setattr(migrate, "_broken_references", lambda _connection: next(found))
        with pytest.raises(migrate.BrokenReferences, match="links"):
            await upgrade(engine)
        assert await _state(engine) == ("0007", [(1, 1, 1), (2, 1, 99)], [], 1)

        monkeypatch.undo()
        assert await upgrade(engine) == head_revision()
        assert await _state(engine) == (head_revision(), [(1, 1, 1), (2, 1, 99)], [], 1)
    finally:
        await engine.dispose()
