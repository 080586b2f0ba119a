"""The migrations create exactly what the models declare, every table, index and column (on
SQLite and Postgres): a migration that forgets what a model gained fails here."""

from __future__ import annotations

import warnings
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from identity.db.models import Base

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
