"""One engine and one session factory per process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from identity.db import dialect
from identity.private_files import private_dir, private_file
from identity.settings import Settings


def create_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        if settings.database_url is None:
            private_dir(settings.data_dir)
        if (path := make_url(url).database) and path != ":memory:" and not path.startswith("file:"):
            # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm the same mode.
            private_file(Path(path))
        kwargs.setdefault("pool_size", 1)
        kwargs.setdefault("max_overflow", 0)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # A fixed pool: connections opened under load are kept, never churned.
    kwargs.setdefault("pool_size", settings.database_pool_size)
    kwargs.setdefault("max_overflow", 0)
    kwargs.setdefault("pool_recycle", 1800)
    # Bound parameters (emails, hashes) never appear in logged errors.
    return create_async_engine(url, hide_parameters=True, **kwargs)


async def reachable(engine: AsyncEngine, timeout: float) -> bool:
    """Whether the database answers a trivial query within ``timeout`` seconds (readiness)."""
    async def ask() -> None:
        async with engine.connect() as connection:
            await connection.execute(_PING)

    try:
        await asyncio.wait_for(ask(), timeout)
    except (TimeoutError, OSError, SQLAlchemyError):
        return False
    return True


_PING = text("SELECT 1")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


async def plan_for_now(db: AsyncSession) -> None:
    """Have Postgres plan this transaction's statements for the tables as they are now.

    Postgres keeps a generic plan for a prepared statement the driver reuses, made for the
    table's size when the plan was made. The sync worker's tables grow fast: a burst can add a
    hundred times the rows of a deliveries table between two autovacuum analyses, and a plan made
    while it was small reads it whole for every row. Planning each statement of a batch costs far
    less than that (and nothing on SQLite, which plans each statement anyway)."""
    if dialect.is_postgres(db):
        await db.execute(_CUSTOM_PLANS)


async def plan_queue_reads(db: AsyncSession) -> None:
    """As :func:`plan_for_now`, and read this transaction's rows through indexes in their order,
    not by bitmap: for a queue table read through a partial index of its pending rows.

    Every row that left the queue leaves its entry in that index until the table is vacuumed. A
    bitmap scan reads every such entry and the heap page it points to, at every read, and never
    marks them; an index scan marks an entry whose row is gone for everyone the first time it
    meets it and skips it from then on, without the heap. A few new rows among tens of thousands
    gone are what a busy queue's reader looks for between two vacuums."""
    if dialect.is_postgres(db):
        await db.execute(_QUEUE_PLANS)


_CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")
_QUEUE_PLANS = text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('enable_bitmapscan', 'off', true)")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def autocommit(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose statements each commit on their own: for reads, and for single
    statements that are atomic by themselves. It spares a transaction's BEGIN and COMMIT
    round trips; anything that must change several rows together uses ``sessions.begin()``."""
    async with sessions() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
