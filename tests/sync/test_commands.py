"""The sync side of the ``onesignin`` command: webhook registration, scale-out processes,
dead letters, and ``serve`` owning its embedded broker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.cli import onesignin
from tests.conftest import free_port
from tests.support import EMBEDDED_DEFAULT, answers, until

pytestmark = pytest.mark.e2e


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return onesignin(env, *args)


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONESIGNIN_")}
    return clean | {"ONESIGNIN_DATA_DIR": str(tmp_path), "ONESIGNIN_DATABASE_URL": database_url, "ONESIGNIN_SECRET_KEY": "c" * 40}


async def test_services_add_with_a_webhook_prints_its_secret_once_and_keeps_it_encrypted(env: dict[str, str], database_url: str) -> None:
    done = run(env, "services", "add", "--name", "Store", "--redirect-uri", "https://store.example/cb", "--webhook-url", "https://store.example/hooks", "--kafka-topic")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["webhook_secret"].startswith("whsec_")
    assert created["topic"] == f"onesignin.service.{created['client_id']}.v1"
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        dump = " ".join(str(v) for v in (await conn.execute(text("SELECT * FROM services"))).all())
    await engine.dispose()
    assert created["webhook_secret"] not in dump and created["webhook_secret"][6:] not in dump

    rotated = run(env, "services", "update", "--client-id", created["client_id"], "--rotate-webhook-secret")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["webhook_secret"] not in (None, created["webhook_secret"])
    removed = json.loads(run(env, "services", "update", "--client-id", created["client_id"], "--remove-webhook", "--no-kafka-topic").stdout)
    assert removed == {"client_id": created["client_id"], "webhook_url": None, "topic": None, "scim_base_url": None}

    insecure = run(env, "services", "add", "--name", "X", "--redirect-uri", "https://x.example/cb", "--webhook-url", "http://x.example/h")
    assert insecure.returncode == 2 and "--webhook-url" in insecure.stderr
    unknown = run(env, "services", "update", "--client-id", "nope", "--kafka-topic")
    assert unknown.returncode == 2 and "nope" in unknown.stderr


async def test_a_services_scim_server_is_set_from_the_command_line_with_its_token_sealed_and_never_shown(env: dict[str, str], database_url: str) -> None:
    token = "scim-secret-token-0a9f"
    done = run(env, "services", "add", "--name", "Wiki", "--redirect-uri", "https://wiki.example/cb",
               "--scim-base-url", "https://wiki.example/scim/v2/", "--scim-token", token)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["scim_base_url"] == "https://wiki.example/scim/v2" and token not in done.stdout
    shown = run(env, "services", "show", "--client-id", created["client_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["scim"] == {
        "base_url": "https://wiki.example/scim/v2", "token_set": True, "token_url": None, "client_id": None, "state": "healthy"
    }
    assert token not in shown.stdout
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        dump = " ".join(str(v) for v in (await conn.execute(text("SELECT * FROM services"))).all())
    await engine.dispose()
    assert token not in dump

    # A new token from standard input (out of the process list); then SCIM removed.
    updated = onesignin(env, "services", "update", "--client-id", created["client_id"], "--scim-token", "-", stdin="another-token\n")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["scim_base_url"] == "https://wiki.example/scim/v2" and "another-token" not in updated.stdout
    # An OAuth client instead of a fixed token (client credentials at the service's token URL).
    oauth = onesignin(env, "services", "update", "--client-id", created["client_id"], "--scim-token-url", "https://wiki.example/oauth/token",
                      "--scim-client-id", "onesignin-hub", "--scim-client-secret", "-", stdin="client-secret\n")
    assert oauth.returncode == 0, oauth.stderr
    scim = json.loads(run(env, "services", "show", "--client-id", created["client_id"], "--json").stdout)["scim"]
    assert scim["token_url"] == "https://wiki.example/oauth/token" and scim["client_id"] == "onesignin-hub" and scim["token_set"]
    assert "client-secret" not in json.dumps(scim)
    removed = run(env, "services", "update", "--client-id", created["client_id"], "--remove-scim")
    assert json.loads(removed.stdout)["scim_base_url"] is None
    half = run(env, "services", "add", "--name", "Half", "--redirect-uri", "https://half.example/cb", "--scim-base-url", "https://half.example/scim")
    assert half.returncode == 2 and "--scim-token" in half.stderr


def test_dead_letters_and_redeliver(env: dict[str, str]) -> None:
    listed = run(env, "sync", "dead-letters")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"dead_letters": [], "dead_notices": []}
    assert json.loads(run(env, "sync", "redeliver", "--all").stdout) == {"redelivered": 0, "notices_redelivered": 0}
    vague = run(env, "sync", "redeliver")
    assert vague.returncode == 2 and "--client-id" in vague.stderr


def test_relay_and_worker_alone_need_a_shared_kafka(env: dict[str, str]) -> None:
    for role in ("relay", "worker"):
        done = run(env, role)
        assert done.returncode == 2 and "ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS" in done.stderr
        assert "Traceback" not in done.stderr
    for args in (["relay"], ["worker"], ["services", "update"], ["sync", "dead-letters"], ["sync", "redeliver"]):
        shown = run(env, *args, "--help")
        assert shown.returncode == 0 and "usage: onesignin" in shown.stdout


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def _descendants(pid: int) -> set[int]:
    """Children, and theirs: on Postgres ``serve`` runs one worker per core by default, and the
    broker is worker 0's child."""
    found = _children(pid)
    for child in list(found):
        with contextlib.suppress(FileNotFoundError):
            found |= _descendants(child)
    return found


def _text(url: str) -> str:
    """What ``url`` answers, or nothing while it does not listen."""
    try:
        return httpx2.get(url).text
    except httpx2.TransportError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
@EMBEDDED_DEFAULT
@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_serve_starts_the_embedded_broker_and_takes_it_along_when_it_stops(env: dict[str, str], how: str) -> None:
    port, metrics_port = free_port(), free_port()
    env = env | {"ONESIGNIN_ISSUER": f"http://127.0.0.1:{port}"}
    hub = subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", str(metrics_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        # A new process that applies the migrations and starts a broker: slow on a loaded machine.
        until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=120, what="serve listening")
        # Its broker and /metrics (another worker may answer on the port first).
        brokers = until(lambda: [p for p in _descendants(hub.pid) if "tansu" in _cmdline(p)], what="the embedded broker started")
        metrics = until(lambda: _text(f"http://127.0.0.1:{metrics_port}/metrics"), what="/metrics")
        assert len(brokers) == 1
        assert "onesignin_outbox_lag_seconds" in metrics
    finally:
        hub.send_signal(signal.SIGINT if how == "interrupt" else signal.SIGKILL)
        hub.wait(timeout=60)
        errors = hub.stderr.read()  # type: ignore[union-attr]
        hub.stderr.close()  # type: ignore[union-attr]
    until(lambda: not _alive(brokers[0]), timeout=5, what=f"the broker gone with serve ({errors[-2000:]})")
