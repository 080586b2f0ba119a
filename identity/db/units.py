"""Units of work that a shutdown does not cut in half."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def whole(unit: Awaitable[T]) -> T:
    """Await ``unit`` (one transaction of a background loop) to its end even when the caller is
    cancelled meanwhile; the cancellation takes effect as soon as the unit is done.

    Cancelled in the middle of a statement, SQLAlchemy can only invalidate the connection. On
    Postgres the server then rolls the transaction back; on SQLite the abandoned connection can
    keep the database's write lock until it is finally closed, and every other writer (the last
    outcomes a stopping worker records, another process) waits its busy timeout out and fails.
    A second cancellation while waiting is not held back."""
    task = asyncio.ensure_future(unit)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller hears of
        raise
