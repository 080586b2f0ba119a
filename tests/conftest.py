"""Fixtures: a real database per test (SQLite always; Postgres when
``ONESIGNIN_TEST_DATABASE_URL`` names one), and the hub served over real HTTP on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
import random
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Python's bytecode caches are written, also where PYTHONDONTWRITEBYTECODE is set: a run starts
# hundreds of Python processes (each `serve`, `relay` and `worker`), and each of them, with each
# test process (whose test modules pytest rewrites), compiled the project again from its source.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import asyncpg
import httpcore2
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from identity.db import engine as engine_module
from identity.db.engine import create_engine, create_sessionmaker
from identity.db.migrate import upgrade
from identity.oidc.keys import ensure_keys
from identity.sealing import KeyCipher
from identity.settings import Settings
from identity.web.app import create_app
from tests.support import Hub

pytest_plugins = ["tests.watchdog", "tests.pwned_range"]

#: Debian's Chromium, which the browser tests drive through Playwright (README, "Run the tests").
CHROMIUM = "/usr/bin/chromium"

# Each HTTP client loads the system's CA bundle into a new TLS context (about 70 ms of CPU), and
# the tests open thousands of clients: within one test process they share one default context.
httpcore2.default_ssl_context = functools.cache(httpcore2.default_ssl_context)


def _sharing_compiled_statements(make: Callable[..., AsyncEngine]) -> Callable[..., AsyncEngine]:
    """Each hub a test starts makes a new engine, and SQLAlchemy keeps compiled statements per
    engine (its cache is keyed by the engine's dialect): every hub would compile every statement
    again, about a sixth of a test process's time. Within one test process, the engines of one
    driver share the dialect and compiled cache of the first one that connected (so the dialect
    has read the server's version); each keeps its own pool and connections."""
    shared: dict[str, tuple[Any, Any]] = {}

    @functools.wraps(make)
    def create(url: Any, **kwargs: Any) -> AsyncEngine:
        engine = make(url, **kwargs)
        sync = engine.sync_engine
        found = shared.get(sync.url.drivername)
        if found is not None and found[0].server_version_info is not None:
            sync.dialect, sync._compiled_cache = found
            sync.pool._dialect = found[0]
        else:
            shared[sync.url.drivername] = (sync.dialect, sync._compiled_cache)
        return engine

    return create


engine_module.create_async_engine = _sharing_compiled_statements(engine_module.create_async_engine)  # type: ignore[assignment]

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
    """Drops scratch databases during the session (one whose schema a test changed) in a
    thread of its own: DROP DATABASE waits for a checkpoint, which need not hold up the next
    test. The session waits for these drops."""

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


_DROP = """
import asyncio, sys, asyncpg
async def main(dsn, names):
    conn = await asyncpg.connect(dsn)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


def drop_after_the_session(names: list[str]) -> None:
    """Drop ``names`` in a process of their own that outlives the test session: each drop waits
    for a checkpoint, seconds at the end of a run that nothing needs to wait for."""
    if names:
        # Spawned, not Popen'd: nothing in this process waits for it or warns that it still runs.
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        os.posix_spawn(sys.executable, [sys.executable, "-c", _DROP, _pg_dsn(), *names], os.environ, file_actions=devnull, setsid=True)


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
    yield names
    drop_after_the_session([names.bare, names.keyed])


#: What a database's schema is: its relations, columns and triggers. A test that changed it
#: (a migration run backwards, a table dropped) leaves a database that is not used again.
SCHEMA_FINGERPRINT = """
select md5(coalesce((select string_agg(c.relname || ':' || c.relkind::text || ':' || coalesce(a.attname, '') || ':'
                                       || coalesce(format_type(a.atttypid, a.atttypmod), ''), ',' order by c.relname, a.attnum)
                     from pg_class c join pg_namespace n on n.oid = c.relnamespace
                     left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                     where n.nspname = 'public'), '')
           || coalesce((select string_agg(tgname, ',' order by tgname) from pg_trigger where not tgisinternal), ''))
"""


@dataclass(frozen=True)
class Contents:
    """What a template database holds: its schema's fingerprint, its tables' and indexes' size
    figures for the planner, each table's rows, each sequence's position."""

    fingerprint: str
    sizes: list[tuple[str, int, float, int]]
    rows: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]
    sequences: dict[str, tuple[int, bool]]

    @classmethod
    async def read(cls, conn: asyncpg.Connection) -> Contents:
        tables = tuple(r[0] for r in await conn.fetch("select tablename from pg_tables where schemaname = 'public'"))
        rows = {}
        for table in tables:
            records = await conn.fetch(f'select * from "{table}"')
            if records:
                rows[table] = (tuple(records[0].keys()), [tuple(r.values()) for r in records])
        sequences = {
            r[0]: (r[1], r[2])
            for r in await conn.fetch(
                "select sequencename, coalesce(last_value, start_value), last_value is not null"
                " from pg_sequences where schemaname = 'public'"
            )
        }
        sizes = [
            tuple(r)
            for r in await conn.fetch(
                "select quote_ident(c.relname), c.relpages, c.reltuples, c.relallvisible from pg_class c"
                " join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind in ('r', 'i')"
            )
        ]
        return cls(await conn.fetchval(SCHEMA_FINGERPRINT), sizes, rows, sequences)

    async def restore(self, conn: asyncpg.Connection) -> None:
        """Make a database of the same schema hold exactly what the template holds."""
        async with conn.transaction():
            # Without triggers: the audit records are append-only, enforced by a trigger.
            await conn.execute("SET LOCAL session_replication_role = replica")
            # A scratch database's restore need not wait for its WAL to reach the disk.
            await conn.execute("SET LOCAL synchronous_commit = off")
            # TRUNCATE, not DELETE: a table emptied by DELETE keeps its pages, and the planner
            # plans for them (a fresh database's tables have none, and no statistics).
            written = [
                r[0]
                for r in await conn.fetch(
                    "select quote_ident(c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                    " where n.nspname = 'public' and c.relkind = 'r' and pg_relation_size(c.oid) > 0"
                )
            ]
            if written:
                await conn.execute(f"TRUNCATE {', '.join(written)} CASCADE")
            # The planner's size figures as the template has them (TRUNCATE leaves indexes
            # counted unknown, where a migration's CREATE INDEX counted them empty, and a plan
            # can differ on that alone). Changing pg_class takes a superuser; without one the
            # database is dropped instead of used again.
            await conn.execute(
                "update pg_class c set relpages = v.relpages, reltuples = v.reltuples, relallvisible = v.relallvisible"
                " from unnest($1::text[], $2::int[], $3::real[], $4::int[]) as v(name, relpages, reltuples, relallvisible)"
                " where c.oid = v.name::regclass",
                *zip(*self.sizes, strict=True),
            )
            for table, (columns, records) in self.rows.items():
                await conn.copy_records_to_table(table, records=records, columns=columns)
            for sequence, (value, called) in self.sequences.items():
                await conn.execute("select setval($1::text::regclass, $2, $3)", f'"{sequence}"', value, called)


class PostgresPool:
    """The tests' scratch databases, used again: a database a test is done with is emptied and
    given its template's rows again (tens of milliseconds) instead of being dropped (a checkpoint each,
    which under a parallel run queues up for a minute at the end). A database whose schema the
    test changed is dropped instead. Each xdist worker has its own pool."""

    def __init__(self, templates: PostgresTemplates) -> None:
        self.templates = templates
        self.contents: dict[str, Contents] = {}
        self.free: dict[str, list[str]] = {templates.bare: [], templates.keyed: []}
        self.made: list[str] = []
        self.dropper = Dropper()

    async def take(self, template: str) -> str:
        if self.free[template]:
            return self.free[template].pop()
        if template not in self.contents:
            conn = await asyncpg.connect(_pg_dsn(template))
            try:
                self.contents[template] = await Contents.read(conn)
            finally:
                await conn.close()
        name = f"osi_t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(_pg_dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await conn.close()
        self.made.append(name)
        return name

    async def give_back(self, template: str, name: str) -> None:
        contents = self.contents[template]
        try:
            conn = await asyncpg.connect(_pg_dsn(name))
            try:
                # Whatever the test left connected (a hub's pool, a killed process's session)
                # goes, as DROP DATABASE ... WITH (FORCE) would make it.
                await conn.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and pid <> pg_backend_pid()"
                )
                if await conn.fetchval(SCHEMA_FINGERPRINT) != contents.fingerprint:
                    raise LookupError("the test changed the schema")
                await contents.restore(conn)
            finally:
                await conn.close()
        except (LookupError, asyncpg.PostgresError, OSError):
            self.made.remove(name)
            self.dropper.drop(name)
            return
        self.free[template].append(name)

    def close(self) -> None:
        self.dropper.close()
        drop_after_the_session(self.made)


@pytest.fixture(scope="session")
def postgres_pool(postgres_templates: PostgresTemplates) -> Iterator[PostgresPool]:
    pool = PostgresPool(postgres_templates)
    yield pool
    pool.close()


#: The test functions that run on SQLite alone: what each reaches on Postgres, other tests reach
#: there too (``tests/statements.py`` checks this and plans the list). Every other test that takes
#: a database runs on both, unless it names its own (``tests/support.py``'s marks);
#: ``ONESIGNIN_TEST_BOTH_DATABASES=1`` runs every one on both.
SQLITE_ALONE_LIST = Path(__file__).with_name("sqlite_alone.txt")


@functools.cache
def _sqlite_alone() -> frozenset[str]:
    if os.environ.get("ONESIGNIN_TEST_BOTH_DATABASES"):
        return frozenset()
    lines = SQLITE_ALONE_LIST.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if "database_url" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return  # the test names its database
    alone = metafunc.definition.nodeid in _sqlite_alone()
    metafunc.parametrize("database_url", ["sqlite"] if alone else ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, migrated database for one test. For a test served by the ``hub`` fixture it
    already holds the signing keys the hub would create on its first start (sealed under
    ``HUB_SECRET_KEY``); for any other test it holds no key, as a new installation's."""
    keyed = "hub" in request.fixturenames or "localhost_hub" in request.fixturenames
    if request.param == "sqlite":
        templates = request.getfixturevalue("sqlite_templates")
        shutil.copy(templates.keyed if keyed else templates.bare, tmp_path / "onesignin.db")
        yield f"sqlite+aiosqlite:///{tmp_path / 'onesignin.db'}"
        return
    pool: PostgresPool = request.getfixturevalue("postgres_pool")
    template = pool.templates.keyed if keyed else pool.templates.bare
    name = await pool.take(template)
    yield _pg_admin_url().rsplit("/", 1)[0] + "/" + name
    await pool.give_back(template, name)


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a test module to change the hub's settings."""
    return {}


@pytest.fixture
async def hub(
    database_url: str, tmp_path: Path, settings_overrides: dict[str, object]
) -> AsyncIterator[Hub]:
    """The hub, served over real HTTP on 127.0.0.1."""
    async with _served_hub(database_url, tmp_path, settings_overrides, "127.0.0.1") as served:
        yield served


@pytest.fixture
async def localhost_hub(
    database_url: str, tmp_path: Path, settings_overrides: dict[str, object]
) -> AsyncIterator[Hub]:
    """The hub as ``hub`` serves it, but with the issuer ``http://localhost:PORT``: browsers
    refuse WebAuthn on an IP address, so passkeys need a host name."""
    async with _served_hub(database_url, tmp_path, settings_overrides, "localhost") as served:
        yield served


_VALIDATED: dict[str, Settings] = {}


def _settings(overrides: dict[str, object]) -> Settings:
    """The test settings with a module's ``overrides``, validated (from the environment too, as
    ``serve`` reads them) once per process and set of overrides: a test process builds hundreds
    of hubs, and each validation walks every field of every source. Each hub gets a copy with
    its own directory, database and issuer."""
    key = repr((sorted(overrides.items()), sorted(i for i in os.environ.items() if i[0].startswith("ONESIGNIN_"))))
    if key not in _VALIDATED:
        _VALIDATED[key] = Settings(
            data_dir=Path("."),
            database_url="sqlite+aiosqlite:///:memory:",
            issuer="http://127.0.0.1:1",
            secret_key=HUB_SECRET_KEY,
            **(TEST_SETTINGS | overrides),  # type: ignore[arg-type]
        )
    return _VALIDATED[key]


@contextlib.asynccontextmanager
async def _served_hub(database_url: str, tmp_path: Path, settings_overrides: dict[str, object], host: str) -> AsyncIterator[Hub]:
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = _settings(settings_overrides).model_copy(
        update={"data_dir": tmp_path, "database_url": database_url, "issuer": f"http://{host}:{port}"}
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


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium for one test (playwright is imported only by the tests that use it)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield launched
        await launched.close()
