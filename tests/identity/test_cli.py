"""The ``onesignin`` command as operators and tooling use it: one JSON object on stdout,
errors on stderr with a non-zero exit, working while ``serve`` runs on the same database."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from identity.db.models import Service
from tests.cli import onesignin
from tests.pwned_range import RangeStandIn, sha1

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return onesignin(env, *args, stdin=stdin)


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": "c" * 40,
        "ONESIGNIN_ARGON2_MEMORY_COST": "8192",
        "ONESIGNIN_ARGON2_TIME_COST": "1",
    }


async def test_services_add_prints_credentials_and_stores_only_a_digest(env: dict[str, str], database_url: str) -> None:
    done = run(env, "services", "add", "--name", "Store", "--redirect-uri", "https://store.example/cb")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert set(created) == {"client_id", "client_secret"}
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        row = (await conn.execute(select(Service.secret_hash, Service.name).where(Service.client_id == created["client_id"]))).one()
        dump = " ".join(str(v) for v in (await conn.execute(text("SELECT * FROM services"))).all())
    await engine.dispose()
    assert row.name == "Store"
    assert created["client_secret"] not in dump


def test_users_add_and_its_refusals(env: dict[str, str]) -> None:
    done = run(env, "users", "add", "--email", "ann@example.com", "--password", PASSWORD, "--given-name", "Ann")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"sub"}

    weak = run(env, "users", "add", "--email", "bob@example.com", "--password", "password123")
    assert weak.returncode == 2 and weak.stdout == ""
    assert "--password: This password is too common" in weak.stderr

    again = run(env, "users", "add", "--email", "ann@example.com", "--password", PASSWORD)
    assert again.returncode == 2 and "already exists" in again.stderr

    piped = run(env, "users", "add", "--email", "cy@example.com", "--password-stdin", stdin=PASSWORD + "\n")
    assert piped.returncode == 0, piped.stderr


def test_bad_configuration_names_the_variable(env: dict[str, str]) -> None:
    done = run(env | {"ONESIGNIN_ISSUER": "ftp://hub"}, "migrate")
    assert done.returncode == 2 and done.stdout == ""
    assert "ONESIGNIN_ISSUER" in done.stderr and "Traceback" not in done.stderr


def test_every_command_has_help(env: dict[str, str]) -> None:
    for args in ([], ["serve"], ["migrate"], ["services", "add"], ["users", "add"]):
        done = run(env, *args, "--help")
        assert done.returncode == 0 and "usage: onesignin" in done.stdout


def test_commands_work_while_serve_runs(env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = env | {"ONESIGNIN_ISSUER": f"http://127.0.0.1:{port}"}
    assert run(env, "migrate").returncode == 0
    hub = subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert json.loads(hub.stdout.readline())["status"] == "starting"  # type: ignore[union-attr]
        for _ in range(200):  # bounded wait until it listens, not a timing assertion
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        metadata = httpx2.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration").json()
        assert metadata["issuer"] == f"http://127.0.0.1:{port}"
        added = run(env, "users", "add", "--email", "dee@example.com", "--password", PASSWORD, "--verified")
        assert added.returncode == 0, added.stderr
        page = httpx2.get(f"http://127.0.0.1:{port}/sign-in")
        assert page.status_code == 200
    finally:
        hub.terminate()
        hub.wait(timeout=30)
        hub.stdout.close()  # type: ignore[union-attr]


BREACHED = "This password has appeared in a data breach"
STRONG = "lantern quiver mosaic tundra"


def test_users_add_refuses_breached_and_predictable_passwords(env: dict[str, str]) -> None:
    breached = run(env, "users", "add", "--email", "bob@example.com", "--password-stdin", stdin="Password123!\n")
    assert breached.returncode == 2 and breached.stdout == ""
    assert f"onesignin: --password: {BREACHED}" in breached.stderr
    predictable = run(env, "users", "add", "--email", "bob@example.com", "--password", "Summer2024!!")
    assert predictable.returncode == 2 and predictable.stdout == ""
    assert "onesignin: --password: A common word with a few numbers or symbols added" in predictable.stderr


@pytest.fixture
def no_database_env(tmp_path: Path) -> dict[str, str]:
    """For commands that stop before they open a database."""
    return os.environ | {"ONESIGNIN_DATA_DIR": str(tmp_path), "ONESIGNIN_SECRET_KEY": "c" * 40}


async def test_users_add_asks_the_breached_password_api_when_enabled(env: dict[str, str], pwned_range: RangeStandIn) -> None:
    pwned_range.breach(STRONG)
    on = env | {"ONESIGNIN_BREACHED_PASSWORD_API": "true", "ONESIGNIN_BREACHED_PASSWORD_API_URL": pwned_range.url}
    # The stand-in runs on this test's event loop: the command runs on a thread meanwhile.
    listed = await asyncio.to_thread(run, on, "users", "add", "--email", "bob@example.com", "--password-stdin", stdin=STRONG + "\n")
    assert listed.returncode == 2 and listed.stdout == ""
    assert f"onesignin: --password: {BREACHED}" in listed.stderr
    assert [r.prefix for r in pwned_range.requests] == [sha1(STRONG)[:5]]

    # Off by default: the same password is then only checked against the offline list.
    added = await asyncio.to_thread(run, env, "users", "add", "--email", "bob@example.com", "--password-stdin", stdin=STRONG + "\n")
    assert added.returncode == 0, added.stderr
    assert len(pwned_range.requests) == 1

    # An API that does not answer in time leaves the offline list alone to decide.
    pwned_range.behaviour = "hang"
    hung = on | {"ONESIGNIN_BREACHED_PASSWORD_API_TIMEOUT": "0.3"}
    added = await asyncio.to_thread(run, hung, "users", "add", "--email", "cy@example.com", "--password-stdin", stdin=STRONG + "\n")
    assert added.returncode == 0, added.stderr
    assert "only the offline list was checked: timed out" in added.stderr


def test_password_stdin_is_the_preferred_way_in_help(no_database_env: dict[str, str]) -> None:
    for command in (["users", "add"], ["agents", "add"]):
        text = " ".join(run(no_database_env, *command, "--help").stdout.split())
        assert "--password-stdin read the password from the first line of standard input (preferred:" in text
        assert "in the process list" in text and "prefer --password-stdin" in text


def test_password_stdin_needs_a_password_line(no_database_env: dict[str, str]) -> None:
    for stdin in ("", "\n"):
        done = run(no_database_env, "users", "add", "--email", "bob@example.com", "--password-stdin", stdin=stdin)
        assert done.returncode == 2 and done.stdout == ""
        assert "--password-stdin: standard input held no password" in done.stderr


def test_a_password_read_from_stdin_is_not_in_the_process_list(env: dict[str, str]) -> None:
    command = subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "users", "add", "--email", "dee@example.com", "--password-stdin"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # It cannot finish before it has read its standard input, so its command line is there to
    # read, once the new program has replaced the forked one (until then it is empty).
    cmdline = ""
    deadline = time.monotonic() + 60
    while "identity.cli" not in cmdline and time.monotonic() < deadline:
        cmdline = Path(f"/proc/{command.pid}/cmdline").read_bytes().decode()
        time.sleep(0.005)
    out, err = command.communicate(PASSWORD + "\n", timeout=120)
    assert command.returncode == 0, err
    assert "--password-stdin" in cmdline and PASSWORD not in cmdline
    assert set(json.loads(out)) == {"sub"}
