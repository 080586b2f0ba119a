"""A background loop stopped in the middle of a transaction: the transaction finishes first, so the
next writer is not left waiting for a lock that an abandoned connection still holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from identity.db.engine import create_engine, create_sessionmaker
from identity.db.units import whole
from identity.settings import Settings

# A statement that keeps SQLite busy for a while (well under a second here), inside a write.
SLOW = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000) SELECT count(*) FROM c"


async def test_a_cancelled_unit_finishes_and_the_next_write_goes_straight_through(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'u.db'}", secret_key="s" * 40)
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions.begin() as db:
            await db.execute(text("CREATE TABLE t (x INTEGER)"))
            await db.execute(text("PRAGMA busy_timeout=2000"))
        started = asyncio.Event()

        async def unit() -> None:
            async with sessions.begin() as db:
                await db.execute(text("INSERT INTO t VALUES (1)"))
                started.set()
                await db.execute(text(SLOW))

        async def loop() -> None:
            await whole(unit())

        task = asyncio.create_task(loop())
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the cancellation was swallowed")
        assert task.cancelled()

        # The unit committed whole, and the database is free at once for the next writer.
        async with sessions.begin() as db:
            await db.execute(text("INSERT INTO t VALUES (2)"))
        async with sessions() as db:
            assert (await db.execute(text("SELECT x FROM t ORDER BY x"))).scalars().all() == [1, 2]
    finally:
        await engine.dispose()


async def test_a_second_cancellation_is_not_held_back() -> None:
    release = asyncio.Event()
    finished = asyncio.Event()

    async def unit() -> None:
        await release.wait()
        finished.set()

    task = asyncio.create_task(whole(unit()))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # waiting for the unit
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert task.cancelled()
    release.set()
    await asyncio.sleep(0.01)
    assert finished.is_set()  # the unit itself still ran to its end
