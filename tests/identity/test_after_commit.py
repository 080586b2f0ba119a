"""What a unit of work asks to run after it commits (mail, back-channel logout, waking the notice
sender) runs once the commit is done, in the order asked, once; after a rollback nothing runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity.db.engine import create_engine, create_sessionmaker
from identity.db.units import on_commit, unit
from identity.settings import Settings


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'u.db'}", secret_key="s" * 40)
    engine = create_engine(settings)
    made = create_sessionmaker(engine)
    async with made.begin() as db:
        await db.execute(text("CREATE TABLE t (x INTEGER)"))
    yield made
    await engine.dispose()


async def rows(sessions: async_sessionmaker[AsyncSession]) -> list[int]:
    async with sessions() as db:
        return list((await db.scalars(text("SELECT x FROM t ORDER BY x"))).all())


async def test_work_runs_after_the_commit_in_the_order_asked(sessions: async_sessionmaker[AsyncSession]) -> None:
    seen: list[tuple[str, list[int]]] = []

    async def mail() -> None:
        seen.append(("mail", await rows(sessions)))  # another connection sees the commit

    async with unit(sessions) as db:
        await db.execute(text("INSERT INTO t VALUES (1)"))
        on_commit(db, mail)
        on_commit(db, lambda: seen.append(("wake", [])))  # plain functions too
        assert seen == []  # nothing before the commit
    assert seen == [("mail", [1]), ("wake", [])]


async def test_nothing_runs_after_a_rollback(sessions: async_sessionmaker[AsyncSession]) -> None:
    seen: list[str] = []
    with pytest.raises(LookupError):
        async with unit(sessions) as db:
            await db.execute(text("INSERT INTO t VALUES (1)"))
            on_commit(db, lambda: seen.append("mail"))
            raise LookupError
    assert seen == [] and await rows(sessions) == []


async def test_work_runs_once_and_a_return_inside_the_block_commits(sessions: async_sessionmaker[AsyncSession]) -> None:
    seen: list[int] = []

    async def handler(x: int) -> int:
        async with unit(sessions) as db:
            await db.execute(text(f"INSERT INTO t VALUES ({x})"))
            on_commit(db, lambda: seen.append(x))
            return x  # a handler's early answer: committed, and its work runs

    assert await handler(1) == 1 and await handler(2) == 2
    async with unit(sessions) as db:
        await db.execute(text("INSERT INTO t VALUES (3)"))
    assert seen == [1, 2] and await rows(sessions) == [1, 2, 3]
