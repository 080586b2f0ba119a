"""``serve`` (and ``worker``) that cannot start say why in one or two lines, with the command or
setting that fixes it, and exit non-zero: a busy port, a database that does not answer, one that
was never migrated. Run as real processes, as an operator runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.cli import onesignin
from tests.conftest import POSTGRES_URL, _pg_admin_url, _pg_dsn, free_port, run_blocking

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {"ONESIGNIN_DATA_DIR": str(tmp_path), "ONESIGNIN_SECRET_KEY": "c" * 40}


def said(done: subprocess.CompletedProcess[str]) -> list[str]:
    """What the command said, without the development warnings logged before it (each a line
    starting with a timestamp)."""
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if not line[:4].isdigit()]


def test_serve_on_a_busy_port(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = onesignin(env, "serve", "--port", str(port), "--metrics-port", "0")
    assert done.returncode == 2
    assert said(done) == [f"onesignin: port {port} on 127.0.0.1 is already in use by another process: stop it, or choose another --port"]
    assert done.stdout == ""

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        done = onesignin(env, "serve", "--port", str(free_port()), "--metrics-port", str(metrics_port))
    assert done.returncode == 2
    assert said(done) == [
        f"onesignin: port {metrics_port} on 127.0.0.1 is already in use by another process: stop it, or choose another "
        "--metrics-port (ONESIGNIN_METRICS_PORT)"
    ]


def test_serve_and_worker_with_an_unreachable_database(env: dict[str, str]) -> None:
    env = env | {"ONESIGNIN_DATABASE_URL": f"postgresql://hub:secret-pw@127.0.0.1:{free_port()}/onesignin"}
    for args in (["serve", "--port", str(free_port()), "--metrics-port", "0"], ["worker", "--port", str(free_port())]):
        done = onesignin(env | {"ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}, *args)
        assert done.returncode == 2, done.stderr
        first, second = said(done)
        assert first.startswith("onesignin: cannot reach the database at postgresql+asyncpg://hub:***@127.0.0.1:")
        assert first.endswith(": connection refused")
        assert second == "check ONESIGNIN_DATABASE_URL and that the database server is running and reachable"
        assert "secret-pw" not in done.stderr


def test_other_commands_with_an_unreachable_database(env: dict[str, str]) -> None:
    env = env | {"ONESIGNIN_DATABASE_URL": f"postgresql://hub@127.0.0.1:{free_port()}/onesignin"}
    for args in (["migrate"], ["services", "list"]):
        done = onesignin(env, *args)
        assert done.returncode == 1
        assert said(done)[1:] == ["check ONESIGNIN_DATABASE_URL and that the database server is running and reachable"]


@pytest.fixture
def unmigrated_postgres() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("needs ONESIGNIN_TEST_DATABASE_URL")
    name = f"unmigrated_{uuid.uuid4().hex[:12]}"

    async def sql(statement: str) -> None:
        connection = await asyncpg.connect(_pg_dsn())
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    run_blocking(lambda: sql(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_admin_url().rsplit("/", 1)[0] + "/" + name
    finally:
        run_blocking(lambda: sql(f'DROP DATABASE "{name}"'))


def test_serve_on_an_unmigrated_postgres_says_run_migrate(env: dict[str, str], unmigrated_postgres: str) -> None:
    env = env | {"ONESIGNIN_DATABASE_URL": unmigrated_postgres}
    done = onesignin(env, "serve", "--port", str(free_port()), "--metrics-port", "0")
    assert done.returncode == 2
    first, second = said(done)
    assert first.endswith(" has never been migrated") and second.startswith("run `onesignin migrate`")

    listed = onesignin(env, "services", "list")
    assert listed.returncode == 1 and said(listed)[1].startswith("run `onesignin migrate`")

    assert onesignin(env, "migrate").returncode == 0
    assert onesignin(env, "services", "list").returncode == 0
