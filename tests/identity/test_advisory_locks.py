"""Postgres advisory locks: each feature has its own id (identity/db/locks.py), so one never
waits behind another's. A signing-key rotation goes ahead while an outbox relay holds its lock."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from identity.db.locks import AdvisoryLock, try_take
from identity.db.models import SigningKey
from identity.oidc.keys import ALGORITHMS, ensure_keys
from identity.sealing import KeyCipher

ROOT = Path(__file__).resolve().parents[2]


def test_every_advisory_lock_is_named_in_one_place() -> None:
    assert len({int(lock) for lock in AdvisoryLock}) == len(AdvisoryLock)
    takers = [
        path.relative_to(ROOT).as_posix()
        for package in ("identity", "sync", "demo")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"pg_(try_)?advisory", path.read_text())
    ]
    assert takers == ["identity/db/locks.py"]


async def test_key_rotation_goes_ahead_while_the_relay_holds_its_lock(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("advisory locks are Postgres's")
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as relay, engine.connect() as watcher:
            await relay.begin()
            assert await relay.scalar(try_take(AdvisoryLock.OUTBOX_RELAY)) is True

            async def rotate() -> None:
                async with async_sessionmaker(engine).begin() as db:
                    await ensure_keys(
                        db, KeyCipher("k" * 40), rotation=dt.timedelta(days=90), publish_lead=dt.timedelta(days=1), keep_after=dt.timedelta(hours=2)
                    )

            rotation = asyncio.create_task(rotate())
            # pg_locks lists the whole cluster's locks: only this database's count here.
            here = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            waiting = text(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND {here}")
            # Until the rotation is done: it must never be found waiting on an advisory lock.
            while not rotation.done():
                if await watcher.scalar(waiting):
                    rotation.cancel()
                    pytest.fail("the key rotation waits behind the relay's advisory lock")
                await asyncio.sleep(0.01)
            await rotation
            async with async_sessionmaker(engine)() as db:
                assert await db.scalar(select(func.count()).select_from(SigningKey)) == len(ALGORITHMS)
            # The relay's lock was never taken from it.
            held = text(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :id AND {here}")
            assert await watcher.scalar(held, {"id": int(AdvisoryLock.OUTBOX_RELAY)}) == 1
            await relay.rollback()
    finally:
        await engine.dispose()
