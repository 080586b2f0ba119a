"""Fixtures: a real database per test (SQLite always; Postgres when
``ONESIGNIN_TEST_DATABASE_URL`` names one), and the hub served over real HTTP on a free port."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from identity.db.engine import create_engine
from identity.db.migrate import upgrade
from identity.settings import Settings
from identity.web.app import create_app
from tests.support import Hub

pytest_plugins = ["tests.watchdog", "tests.pwned_range"]

POSTGRES_URL = os.environ.get("ONESIGNIN_TEST_DATABASE_URL")
# Cheaper argon2id, mail sent before the response so a test can read it at once, no sync
# pipeline (tests/sync turn it on, with a real broker), webhooks and back-channel logout
# allowed to reach loopback, where the tests' receivers listen (public addresses only otherwise),
# and metrics on a free loopback port (``app[sync.runtime.METRICS_URL]`` says which).
TEST_SETTINGS = {
    "argon2_memory_cost": 8192,
    "argon2_time_cost": 1,
    "mail_in_background": False,
    "sync_in_process": False,
    "outbound_allowed_networks": ["127.0.0.0/8"],
    "metrics_port": 0,
}


def run_blocking(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to completion on its own loop in a thread (session fixtures may be
    first requested from inside a running test loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(make())).result()


def free_port() -> int:
    """A free port for a server started later, possibly by another process. It is taken below
    the kernel's ephemeral range (32768 and up), so an outgoing connection made meanwhile
    cannot be handed the same port."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def bound_socket() -> socket.socket:
    """A listening socket on a kernel-chosen port, for a server started in this process."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template")
    settings = Settings(data_dir=directory, secret_key="t" * 40)

    async def build() -> None:
        engine = create_engine(settings)
        await upgrade(engine)
        await engine.dispose()

    run_blocking(build)
    return directory / "onesignin.db"


def _pg_admin_url() -> str:
    assert POSTGRES_URL
    url = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    return url


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("set ONESIGNIN_TEST_DATABASE_URL to run the Postgres variant")
    name = f"osi_template_{uuid.uuid4().hex[:8]}"
    admin = _pg_admin_url()

    async def create() -> None:
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()
        migrated = create_async_engine(admin.rsplit("/", 1)[0] + "/" + name)
        await upgrade(migrated)
        await migrated.dispose()

    run_blocking(create)
    yield name

    async def drop() -> None:
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()

    run_blocking(drop)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        shutil.copy(template, tmp_path / "onesignin.db")
        yield f"sqlite+aiosqlite:///{tmp_path / 'onesignin.db'}"
        return
    template = request.getfixturevalue("postgres_template")
    admin = _pg_admin_url()
    name = f"osi_t_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield admin.rsplit("/", 1)[0] + "/" + name
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a test module to change the hub's settings."""
    return {}


@pytest.fixture
async def hub(
    database_url: str, tmp_path: Path, settings_overrides: dict[str, object]
) -> AsyncIterator[Hub]:
    """The hub, served over real HTTP on 127.0.0.1."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        issuer=f"http://127.0.0.1:{port}",
        secret_key="s" * 40,
        **(TEST_SETTINGS | settings_overrides),  # type: ignore[arg-type]
    )
    app = create_app(settings, migrate=False)
    server = TestServer(
        app, host="127.0.0.1", port=port, socket_factory=lambda *_: sock
    )
    try:
        await server.start_server()
    except BaseException:
        sock.close()
        raise
    try:
        yield Hub(settings=settings, app=app, url=settings.issuer)
    finally:
        await server.close()
