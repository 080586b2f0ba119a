"""``INSERT … ON CONFLICT`` for whichever database the session is bound to (Postgres and SQLite
both have it, through their own SQLAlchemy dialect constructs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db import dialect


def insert_for(db: AsyncSession, model: Any) -> Any:
    return insert_on(dialect.name(db), model)


def insert_on(dialect_name: str, model: Any) -> Any:
    """``insert_for`` by the dialect's name (for a statement built once per database)."""
    if dialect_name == dialect.POSTGRES:
        return pg_insert(model)
    return sqlite_insert(model)


async def ensure_row(db: AsyncSession, model: Any, **values: Any) -> bool:
    """Insert the row unless one with the same unique key exists; True if this call inserted it.
    Concurrent callers never fail on the unique constraint; afterwards the row exists."""
    result = await db.execute(insert_for(db, model).values(**values).on_conflict_do_nothing())
    return bool(result.rowcount)
