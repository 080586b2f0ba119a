"""Migration 0012 creates exactly what the models declare for disabled services and accounts and
a rotated client secret's predecessor (on SQLite and Postgres)."""

from __future__ import annotations

import warnings
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from identity.db.models import Base

TABLES = ("'services'", "'accounts'")


async def test_the_migration_matches_the_models(database_url: str) -> None:
    def differences(connection: Any) -> list[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLite cannot reflect expression indexes
            diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        return [d for d in diffs if any(t in repr(d) for t in TABLES)]

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()
