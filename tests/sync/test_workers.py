"""``onesignin serve --workers N``, run as real processes on one shared port: every worker
answers, a worker killed is started again while the others keep answering, the sync pipeline
runs in one of them only, and SIGTERM ends them all with status 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from identity.settings import Settings
from tests.cli import onesignin
from tests.conftest import HUB_SECRET_KEY, free_port
from tests.support import Hub, eventually
from tests.sync.helpers import add_people, change, link_directly, recorded, settled
from tests.sync.receivers import Receivers

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The test's own hub gives the database only: the served one runs the sync pipeline."""
    return {}


def children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= {int(p) for p in (task / "children").read_text().split()}
    except FileNotFoundError:
        pass
    return found


def descendants(pid: int) -> set[int]:
    found = children(pid)
    for child in list(found):
        found |= descendants(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except FileNotFoundError:
        return ""


def worker_index(pid: int) -> int | None:
    args = command_line(pid).split()
    return int(args[args.index("--worker-index") + 1]) if "--worker-index" in args else None


def workers(parent: int) -> dict[int, int]:
    """Worker index -> pid, of the parent's live children."""
    return {index: pid for pid in children(parent) if alive(pid) and (index := worker_index(pid)) is not None}


@pytest.fixture
async def served(hub: Hub, database_url: str, tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[str], str, str]]:
    """``onesignin serve --workers 2`` on the test's database, with the embedded broker."""
    port, metrics_port = free_port(), free_port()
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESIGNIN_")} | {
        "ONESIGNIN_DATA_DIR": str(tmp_path / "served"),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": HUB_SECRET_KEY,
        "ONESIGNIN_ISSUER": url,
        "ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "ONESIGNIN_RELAY_POLL_INTERVAL": "0.02",
        "ONESIGNIN_SYNC_RETRY_SCHEDULE": "[0.2, 0.4, 0.8]",
        "ONESIGNIN_KAFKA_SESSION_TIMEOUT": "3",
        "ONESIGNIN_ARGON2_MEMORY_COST": "8192",
        "ONESIGNIN_ARGON2_TIME_COST": "1",
    }
    errors = (tmp_path / "serve.err").open("w+", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", str(metrics_port), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=errors, text=True,
    )
    try:
        async with httpx2.AsyncClient(timeout=5) as http:

            async def healthy() -> bool:
                assert process.poll() is None, Path(errors.name).read_text()[-3000:]
                try:
                    # /metrics answers once worker 0 runs its broker and sync pipeline; another may answer first.
                    return (
                        (await http.get(f"{url}/healthz")).status_code == 200
                        and (await http.get(metrics_url)).status_code == 200
                        and len(workers(process.pid)) == 2
                    )
                except httpx2.TransportError:
                    return False

            await eventually(healthy, timeout=90, what="serve --workers 2 answering")
        yield process, url, metrics_url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        errors.close()


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def answering_worker(server_port: int, client_port: int, pids: dict[int, int]) -> int:
    """Which worker holds the server side of the connection from ``client_port`` (read from
    /proc/net/tcp while the connection is open)."""
    wanted_local, wanted_remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = next(
        fields[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[1] == wanted_local and fields[2] == wanted_remote
    )
    return next(index for index, pid in pids.items() if inode in socket_inodes(pid))


async def introspect_on_a_new_connection(url: str, token: str, auth: str, pids: dict[int, int]) -> tuple[bool, int]:
    """The token's ``active`` as one connection of its own sees it, and the worker that answered."""
    port = free_port()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", port))) as http:
        async with http.post(f"{url}/introspect", data={"token": token}, headers={"Authorization": auth}) as response:
            assert response.status == 200
            active = (await response.json())["active"]
            return active, answering_worker(int(url.rsplit(":", 1)[1]), port, pids)


async def introspect_until_both_answer(url: str, token: str, auth: str, pids: dict[int, int]) -> list[tuple[bool, int]]:
    """At least 8 answers, and more until each worker gave some (the kernel spreads connections by
    a hash of their addresses: 64 all to one worker would be a chance of 2**-63)."""
    seen: list[tuple[bool, int]] = []
    while len(seen) < 8 or ({worker for _, worker in seen} != set(pids) and len(seen) < 64):
        seen.append(await introspect_on_a_new_connection(url, token, auth, pids))
    return seen


async def get_ok(http: httpx2.AsyncClient, url: str, count: int) -> None:
    for _ in range(count):
        # A connection of its own each time: the kernel hands it to whichever worker accepts first.
        response = await http.get(url, headers={"Connection": "close"})
        assert response.status_code == 200


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_workers_share_the_port_survive_a_crash_sync_once_and_stop_cleanly(
    served: tuple[subprocess.Popen[str], str, str], hub: Hub, receivers: Receivers
) -> None:
    process, url, metrics_url = served
    assert json.loads(process.stdout.readline())["workers"] == 2  # type: ignore[union-attr]
    first = workers(process.pid)
    assert set(first) == {0, 1}
    # One embedded broker, under worker 0 (which runs the sync pipeline); worker 1 serves HTTP only.
    brokers = [p for p in descendants(process.pid) if "tansu" in command_line(p)]
    assert len(brokers) == 1 and brokers[0] in children(first[0])

    # A connection the kernel gives to a worker that is down waits for its successor (the parent
    # keeps its socket open): it is answered late (seconds on a busy machine), not refused.
    async with httpx2.AsyncClient(timeout=90) as http:
        assert "onesignin_outbox_lag_seconds" in (await http.get(metrics_url)).text
        await get_ok(http, f"{url}/healthz", 20)

        # The HTTP-only worker dies: requests keep succeeding, and the parent starts it again.
        os.kill(first[1], signal.SIGKILL)
        await get_ok(http, f"{url}/.well-known/openid-configuration", 20)

        async def replaced() -> bool:
            now = workers(process.pid)
            return set(now) == {0, 1} and now[1] != first[1] and now[0] == first[0]

        await eventually(replaced, timeout=60, what="worker 1 started again")
        await get_ok(http, f"{url}/healthz", 20)

        # One /metrics sums both workers' figures: requests on new connections (which the kernel
        # spreads over both), and the pools of the two live processes (not the killed one's).
        for _ in range(16):
            async with httpx2.AsyncClient(timeout=90) as fresh:
                assert (await fresh.get(f"{url}/no-such-page")).status_code == 404
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families((await http.get(metrics_url)).text)
            for s in family.samples
        }
        assert samples[("onesignin_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 16
        assert samples[("onesignin_db_pool_size", ())] == 2 * Settings.model_fields["database_pool_size"].default

    # A profile change reaches the service's webhook once: only one process relays and delivers.
    service = await hub.add_service(name="Store", webhook_url=receivers.url("Store"))
    receivers["Store"].secret = service.webhook_secret
    [sub] = await add_people(hub, 1)
    await link_directly(hub, [sub], service.client_id)
    linked = (await receivers.wait_for("Store", sub, 1, timeout=60))["version"]
    # The link's snapshot recorded as delivered first: a change made while it is in flight would
    # be sent again after it (at least once, by design), which is not what this test counts.
    await recorded(hub, service.client_id, sub, linked)
    version = await change(hub, sub, given_name="Changed")
    await receivers.wait_for("Store", sub, version, timeout=60)
    await settled(hub, service.client_id, timeout=60)
    same = [d for d in receivers["Store"].received if d["data"].get("sub") == sub and d["data"].get("version") == version]
    assert len(same) == 1, receivers["Store"].received

    # A revoked service token is refused by both workers at once: from the moment the revocation
    # is answered, whichever worker a connection reaches.
    secret = service.client_secret or ""
    auth = aiohttp.encode_basic_auth(service.client_id, secret)
    async with httpx2.AsyncClient(timeout=90) as http:
        issued = await http.post(f"{url}/token", data={"grant_type": "client_credentials", "scope": "openid"}, auth=(service.client_id, secret))
        token = issued.json()["access_token"]
        pids = workers(process.pid)
        seen = await introspect_until_both_answer(url, token, auth, pids)
        assert {active for active, _ in seen} == {True} and {worker for _, worker in seen} == {0, 1}, seen
        revoked = await http.post(f"{url}/revoke", data={"token": token}, auth=(service.client_id, secret))
        assert revoked.status_code == 200
    seen = await introspect_until_both_answer(url, token, auth, pids)
    assert {active for active, _ in seen} == {False} and {worker for _, worker in seen} == {0, 1}, seen

    everyone = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 120) == 0

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in everyone)

    await eventually(all_gone, timeout=30, what="every worker and the broker stopped")


def test_several_workers_need_postgres(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESIGNIN_")} | {
        "ONESIGNIN_DATA_DIR": str(tmp_path), "ONESIGNIN_SECRET_KEY": "c" * 40,
    }
    refused = onesignin(env, "serve", "--port", str(free_port()), "--workers", "2")
    assert refused.returncode == 2 and "Postgres" in refused.stderr and "Traceback" not in refused.stderr
    shown = onesignin(env, "serve", "--help")
    assert "--workers N" in shown.stdout and "SIGHUP" in shown.stdout and "--listen-fd" not in shown.stdout


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_sighup_replaces_every_worker_while_requests_keep_succeeding(served: tuple[subprocess.Popen[str], str, str]) -> None:
    process, url, metrics_url = served
    before = workers(process.pid)
    answered = 0
    async with httpx2.AsyncClient(timeout=90) as http:
        process.send_signal(signal.SIGHUP)

        async def replaced() -> bool:
            nonlocal answered
            await get_ok(http, f"{url}/healthz", 5)
            answered += 5
            now = workers(process.pid)
            return set(now) == {0, 1} and not set(now.values()) & set(before.values())

        await eventually(replaced, timeout=120, what="both workers replaced")
        assert answered >= 5

        async def metrics_back() -> bool:
            try:
                return (await http.get(metrics_url)).status_code == 200
            except httpx2.TransportError:
                return False

        await eventually(metrics_back, timeout=60, what="the new worker 0 serving /metrics")
    after = workers(process.pid)
    brokers = [p for p in descendants(process.pid) if "tansu" in command_line(p)]
    assert len(brokers) == 1 and brokers[0] in children(after[0])
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 120) == 0
