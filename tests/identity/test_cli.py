"""The ``onesignin`` command as operators and tooling use it: one JSON object on stdout,
errors on stderr with a non-zero exit, working while ``serve`` runs on the same database."""

from __future__ import annotations

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

PASSWORD = "correct horse battery staple"


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "identity.cli", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


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
