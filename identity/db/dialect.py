"""Which database a session or a session factory speaks to: the one place that reads it, for the
statements that differ between Postgres and SQLite (one round trip on Postgres where SQLite
needs two, advisory locks, transaction-local settings)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, bindparam, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

POSTGRES = "postgresql"
SQLITE = "sqlite"


def name(db: AsyncSession) -> str:
    """The dialect of the database ``db`` is bound to: ``postgresql`` or ``sqlite``."""
    return db.bind.dialect.name


def is_postgres(db: AsyncSession) -> bool:
    return name(db) == POSTGRES


def among(dialect_name: str, column: Any, name: str) -> Any:
    """``column IN :name``, for a statement built once per database and run with a list as
    ``name``. On Postgres ``column = ANY(:name)``, one array: the statement's text is the same
    whatever the list's length, so the driver prepares it once per connection and reuses it,
    where an IN list of each length is a new statement to send, parse and plan (the sync worker's
    batches vary in size with every poll). Elsewhere an expanding IN list (SQLite plans every
    statement anyway)."""
    if dialect_name == POSTGRES:
        return column == func.any(bindparam(name, type_=array_of(column.type)))
    return column.in_(bindparam(name, expanding=True))


def array_of(type_: Any) -> ARRAY:
    """The type of a Postgres array parameter of ``type_`` values. A sized string goes in unsized:
    Postgres's cast to ``varchar(n)`` cuts a longer value short (which could then match another
    row, or be stored cut) where the column's own check refuses it."""
    if isinstance(type_, String) and type_.length is not None:
        type_ = String()
    return ARRAY(type_)


def opens_postgres(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Whether the sessions ``sessions`` opens speak to Postgres (before opening one)."""
    return sessions.kw["bind"].dialect.name == POSTGRES


def is_postgres_engine(engine: AsyncEngine) -> bool:
    return engine.dialect.name == POSTGRES
