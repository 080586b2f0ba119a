"""Units of work: what runs once one commits (:func:`unit`, :func:`on_commit`), and units
that a shutdown does not cut in half (:func:`whole`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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


#: Where a session keeps what must run once its transaction commits (see :func:`on_commit`).
_AFTER_COMMIT = "onesignin.after_commit"

AfterCommit = Callable[[], Awaitable[None] | None]


def on_commit(db: AsyncSession, work: AfterCommit) -> None:
    """Run ``work`` once the transaction ``db`` is in has committed: mail, back-channel logout,
    waking the notice sender. Nothing runs when it rolls back. Only :func:`unit` runs it: a
    session opened otherwise must not be given any."""
    db.info.setdefault(_AFTER_COMMIT, []).append(work)


@asynccontextmanager
async def unit(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work, as ``sessions.begin()``: committed when the block ends (a ``return``
    inside it included), rolled back when it raises. Then, and only after a commit, what the
    block asked for with :func:`on_commit` runs, in the order asked, once, before the caller goes
    on. A failure of one of those is the caller's, as if it had called it after the block."""
    async with sessions() as db:
        try:
            async with db.begin():
                yield db
        except BaseException:
            db.info.pop(_AFTER_COMMIT, None)
            raise
        work = db.info.pop(_AFTER_COMMIT, [])
    for step in work:
        result = step()
        if inspect.isawaitable(result):
            await result
