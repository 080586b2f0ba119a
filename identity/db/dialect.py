"""Which database a session or a session factory speaks to: the one place that reads it, for the
statements that differ between Postgres and SQLite (one round trip on Postgres where SQLite
needs two, advisory locks, transaction-local settings)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

POSTGRES = "postgresql"
SQLITE = "sqlite"


def name(db: AsyncSession) -> str:
    """The dialect of the database ``db`` is bound to: ``postgresql`` or ``sqlite``."""
    return db.bind.dialect.name


def is_postgres(db: AsyncSession) -> bool:
    return name(db) == POSTGRES


def opens_postgres(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Whether the sessions ``sessions`` opens speak to Postgres (before opening one)."""
    return sessions.kw["bind"].dialect.name == POSTGRES


def is_postgres_engine(engine: AsyncEngine) -> bool:
    return engine.dialect.name == POSTGRES
