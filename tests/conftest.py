"""Fixtures: a real database per test (SQLite always; Postgres when
``ONESIGNIN_TEST_DATABASE_URL`` names one), and the hub served over real HTTP on a free port."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import random
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpcore2
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from identity.db.engine import create_engine, create_sessionmaker
from identity.db.migrate import upgrade
from identity.oidc.keys import ensure_keys
from identity.sealing import KeyCipher
from identity.settings import Settings
from identity.web.app import create_app
from tests.support import Hub

pytest_plugins = ["tests.watchdog", "tests.pwned_range"]

# Each HTTP client loads the system's CA bundle into a new TLS context (about 70 ms of CPU), and
# the tests open thousands of clients: within one test process they share one default context.
httpcore2.default_ssl_context = functools.cache(httpcore2.default_ssl_context)

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end tests first, then the other sync tests (each waits for a broker's consumer
    groups): the longest tests start early, or a parallel run would end with one worker busy and
    the others idle."""
    sync = Path(__file__).parent / "sync"
    items.sort(key=lambda item: (item.get_closest_marker("e2e") is None, not item.path.is_relative_to(sync)))


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


#: The secret key of the hub fixture; the keyed templates' private keys are sealed under it.
HUB_SECRET_KEY = "s" * 40


async def add_signing_keys(engine: AsyncEngine) -> None:
    """The signing keys a hub creates when it first starts (``identity.web.app._refresh_keys``),
    created once per session so that each test's database starts with them."""
    settings = Settings(secret_key=HUB_SECRET_KEY)
    async with create_sessionmaker(engine).begin() as db:
        await ensure_keys(
            db,
            KeyCipher(settings.resolved_secret_key()),
            rotation=dt.timedelta(days=settings.key_rotation_days),
            publish_lead=dt.timedelta(seconds=settings.key_publish_lead),
            keep_after=dt.timedelta(seconds=max(settings.id_token_ttl, settings.access_token_ttl) + 3600),
        )


@dataclass(frozen=True)
class SqliteTemplates:
    bare: Path
    keyed: Path


@pytest.fixture(scope="session")
def sqlite_templates(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplates:
    """A migrated SQLite database, and a copy that also holds the hub's signing keys."""
    bare = tmp_path_factory.mktemp("template")
    keyed = tmp_path_factory.mktemp("keyed-template")

    async def build() -> None:
        engine = create_engine(Settings(data_dir=bare, secret_key="t" * 40))
        await upgrade(engine)
        await engine.dispose()
        shutil.copy(bare / "onesignin.db", keyed / "onesignin.db")
        engine = create_engine(Settings(data_dir=keyed, secret_key="t" * 40))
        await add_signing_keys(engine)
        await engine.dispose()

    run_blocking(build)
    return SqliteTemplates(bare / "onesignin.db", keyed / "onesignin.db")


@pytest.fixture(scope="session")
def sqlite_template(sqlite_templates: SqliteTemplates) -> Path:
    """The migrated SQLite database that holds the hub's signing keys."""
    return sqlite_templates.keyed


def _pg_admin_url() -> str:
    assert POSTGRES_URL
    url = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    return url


def _pg_dsn(name: str | None = None) -> str:
    """The admin URL as asyncpg takes it (optionally naming another database)."""
    dsn = _pg_admin_url().replace("postgresql+asyncpg://", "postgresql://", 1)
    return dsn if name is None else dsn.rsplit("/", 1)[0] + "/" + name


@dataclass(frozen=True)
class PostgresTemplates:
    bare: str
    keyed: str


class Dropper:
    """Drops the tests' scratch databases in a thread of its own: DROP DATABASE waits for a
    checkpoint, which need not hold up the next test. The session waits for every drop."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="drop-database")
        self.pending: list[Future[None]] = []

    def drop(self, name: str) -> None:
        async def drop() -> None:
            conn = await asyncpg.connect(_pg_dsn())
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        self.pending.append(self.pool.submit(lambda: asyncio.run(drop())))

    def close(self) -> None:
        for future in self.pending:
            future.result()
        self.pool.shutdown()


@pytest.fixture(scope="session")
def postgres_templates() -> Iterator[PostgresTemplates]:
    if not POSTGRES_URL:
        pytest.skip("set ONESIGNIN_TEST_DATABASE_URL to run the Postgres variant")
    tag = uuid.uuid4().hex[:8]
    names = PostgresTemplates(f"osi_template_{tag}", f"osi_template_{tag}_keyed")
    admin = _pg_admin_url()

    async def create() -> None:
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{names.bare}"'))
        await engine.dispose()
        migrated = create_async_engine(admin.rsplit("/", 1)[0] + "/" + names.bare)
        await upgrade(migrated)
        await migrated.dispose()
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{names.keyed}" TEMPLATE "{names.bare}"'))
        await engine.dispose()
        keyed = create_async_engine(admin.rsplit("/", 1)[0] + "/" + names.keyed)
        await add_signing_keys(keyed)
        await keyed.dispose()

    run_blocking(create)
    dropper = Dropper()
    yield names
    for name in names.bare, names.keyed:
        dropper.drop(name)
    dropper.close()


@pytest.fixture(scope="session")
def postgres_dropper() -> Iterator[Dropper]:
    dropper = Dropper()
    yield dropper
    dropper.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, migrated database for one test. For a test served by the ``hub`` fixture it
    already holds the signing keys the hub would create on its first start (sealed under
    ``HUB_SECRET_KEY``); for any other test it holds no key, as a new installation's."""
    keyed = "hub" in request.fixturenames
    if request.param == "sqlite":
        templates = request.getfixturevalue("sqlite_templates")
        shutil.copy(templates.keyed if keyed else templates.bare, tmp_path / "onesignin.db")
        yield f"sqlite+aiosqlite:///{tmp_path / 'onesignin.db'}"
        return
    templates = request.getfixturevalue("postgres_templates")
    dropper = request.getfixturevalue("postgres_dropper")
    name = f"osi_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_pg_dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{templates.keyed if keyed else templates.bare}"')
    finally:
        await conn.close()
    yield _pg_admin_url().rsplit("/", 1)[0] + "/" + name
    dropper.drop(name)


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
        secret_key=HUB_SECRET_KEY,
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
