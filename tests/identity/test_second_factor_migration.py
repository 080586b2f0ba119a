"""Migration 0010 creates exactly what the models declare for people's second factors and the
``amr`` and ``user_agent`` of sessions and codes (on SQLite and Postgres)."""

from __future__ import annotations

import warnings
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from identity.db.models import Base

TABLES = ("second_factors", "browser_sessions", "authorization_codes")


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


async def test_migration_0011_matches_the_passkey_models(database_url: str) -> None:
    def differences(connection: Any) -> list[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        return [d for d in diffs if any(t in repr(d) for t in ("passkeys", "spent_challenges"))]

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()
