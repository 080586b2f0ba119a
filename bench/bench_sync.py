#!/usr/bin/env python3
"""End-to-end speed of profile sync: a committed change to the signed webhooks it causes.

From a change of a person's details, committed, to the signed webhook arriving at each linked
service, through the outbox, Kafka, the fan-out and the deliverer.

Everything runs as real processes talking real protocols on this machine: the embedded broker
(Tansu) or the Kafka named by --kafka, the sync pipeline as ``onesignin relay`` and ``onesignin
worker`` subprocesses (one relay, --workers workers), and the member services' webhook
receivers in another process (a lean HTTP server that checks the Standard Webhooks signatures).
This process writes the changes (as a member service's ``PATCH /api/v1/me`` does) and keeps their
commit times. Every process shares the machine's cores: figures are for the whole machine.

Two scenarios:

* latency: --rate changes per second for --seconds seconds, round-robin over --people people,
  each linked to every one of --services services. A change counts as delivered to a service
  when the service received that version or a later one (deliveries coalesce); its latency is
  that first arrival minus the change's commit time. The p99 is also given for the changes
  committed in each 2 s, beside the cores the machine was busy then; a window slower than
  0.25 s is broken down by part (other processes of the machine included).
* throughput: --burst changes (distinct people) queued in the outbox while the relay is
  stopped, then the relay started: webhook deliveries per second at the receivers, from the
  first to the last (--burst-mode live queues them with the pipeline running instead).

The hub is seeded as it stands after people linked: each link's snapshot delivered, and (on
Postgres) planner statistics up to date, as autovacuum keeps them. --cold seeds links only, as
on a hub whose links were imported and whose first deliveries come all at once: every delivery
row is new, in a table Postgres last analyzed empty.

    python bench/bench_sync.py
    python bench/bench_sync.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/test
    python bench/bench_sync.py --json --profile /tmp/sync-profile   # py-spy the sync processes
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson

LATENCY_TARGET_P99 = 1.0  # seconds, at 200 changes/s fanned out to 5 services
HIGH_LOAD_P99 = 0.25  # seconds, at 500 changes/s: windows slower than this are broken down by part
HIGH_LOAD_RATE = 500  # changes/s from which the p99 is held to HIGH_LOAD_P99


def p99_target(rate: float) -> float:
    """The p99 a latency run at ``rate`` changes per second is held to."""
    return HIGH_LOAD_P99 if rate >= HIGH_LOAD_RATE else LATENCY_TARGET_P99
THROUGHPUT_TARGET = 2000.0  # webhook deliveries per second, sustained
WINDOW = 2.0  # seconds of commit time per window in the latency scenario's p99_by_window_s
SCOPE = "openid profile email"
REDIRECT = "http://127.0.0.1:9/callback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spawn(cmd: list[str], env: dict[str, str] | None, log_path: Path, *, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its stdout and stderr going to ``log_path``."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdin=stdin, stdout=out, stderr=subprocess.STDOUT)


# -- the receivers (a separate process) --------------------------------------------------------


def receiver_main(argv: list[str]) -> None:
    """``bench_sync.py _receiver --port P --verify-every K``; reads {name: whsec_...} on stdin.

    POST /hooks/<name>  a delivery: verified (1 in K), recorded as (time, name, sub, version)
    GET  /count         {"count": n}
    GET  /stats         {"received": [[t, name, sub, version], ...], "verified": n, "rejected": n}
    POST /expect        {"targets": {sub: version}, "services": [name]}: what to count from now on
    GET  /reached       {"reached": n, "of": m, "count": n}: how many expected (service, sub) pairs
                        hold their target version or a later one (kept as deliveries come, so
                        polling costs the receiver nothing while it is being measured)
    POST /reset         forget what was received

    The receivers share the machine with the hub, so they are kept lean: a small HTTP/1.1
    server on an asyncio protocol (keep-alive, Content-Length bodies: what the hub sends), and the
    Standard Webhooks check done with ``hmac.digest`` directly, the body read with orjson. That
    check is compared with the ``standardwebhooks`` library's at start (its signatures verify,
    altered ones do not)."""
    parser = argparse.ArgumentParser(prog="bench_sync.py _receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--verify-every", type=int, default=1)
    args = parser.parse_args(argv)
    secrets_by_name = json.loads(sys.stdin.readline())
    keys = {name.encode(): _webhook_key(secret) for name, secret in secrets_by_name.items()}
    _check_verifier()
    every = max(1, args.verify_every)
    state: dict[str, Any] = {"received": [], "seen": 0, "verified": 0, "rejected": 0, "unreadable": 0}
    latest: dict[tuple[str, str], int] = {}
    expected: dict[str, Any] = {"targets": {}, "services": set(), "reached": 0}

    def hook(name: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[int, Any]:
        key = keys.get(name)
        at = time.time()
        if key is None:
            return 404, None
        state["seen"] += 1
        if state["seen"] % every == 0:
            if not _verified(key, headers, body, at):
                state["rejected"] += 1
                return 401, None
            state["verified"] += 1
        try:
            data = orjson.loads(body)["data"]
            sub, version = data["sub"], data["version"]
        except (ValueError, KeyError, TypeError):
            state["unreadable"] += 1
            return 400, None
        service = name.decode()
        state["received"].append((at, service, sub, version))
        before = latest.get((service, sub), 0)
        if version > before:
            latest[(service, sub)] = version
            target = expected["targets"].get(sub)
            if target is not None and service in expected["services"] and before < target <= version:
                expected["reached"] += 1
        return 204, None

    def reached() -> dict[str, Any]:
        of = len(expected["services"]) * len(expected["targets"])
        return {"reached": expected["reached"], "of": of, "count": len(state["received"])}

    def control(method: bytes, path: bytes, body: bytes) -> tuple[int, Any]:
        if (method, path) == (b"GET", b"/count"):
            return 200, {"count": len(state["received"])}
        if (method, path) == (b"GET", b"/stats"):
            return 200, {k: v for k, v in state.items() if k != "seen"}
        if (method, path) == (b"GET", b"/reached"):
            return 200, reached()
        if (method, path) == (b"POST", b"/expect"):
            wanted = json.loads(body)
            targets, names = wanted["targets"], set(wanted["services"])
            done = sum(1 for name in names for sub, version in targets.items() if latest.get((name, sub), 0) >= version)
            expected.update(targets=targets, services=names, reached=done)
            return 200, reached()
        if (method, path) == (b"POST", b"/reset"):
            state.update(received=[], seen=0, verified=0, rejected=0, unreadable=0)
            latest.clear()
            expected.update(targets={}, services=set(), reached=0)
            return 200, {"count": 0}
        return 404, None

    def answer(method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[int, Any]:
        if method == b"POST" and path.startswith(b"/hooks/"):
            return hook(path[len(b"/hooks/"):], headers, body)
        return control(method, path, body)

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(lambda: _Http(answer), "127.0.0.1", args.port, backlog=1024))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


_REASONS = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 411: b"Length Required"}
_TOLERANCE = 300  # seconds, as the standardwebhooks library allows


class _Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive for requests with a Content-Length body (or none)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"transfer-encoding" in headers:
                self._send(411, None, close=True)
                return
            size = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + size:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + size])
            del self.buffer[: end + 4 + size]
            status, payload = self.answer(method, target.split(b"?", 1)[0], headers, body)
            self._send(status, payload, close=headers.get(b"connection", b"").lower() == b"close")

    def _send(self, status: int, payload: Any, *, close: bool = False) -> None:
        assert self.transport is not None
        body = json.dumps(payload).encode() if payload is not None else b""
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Status"))
        if payload is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        elif status != 204:
            head += b"Content-Length: 0\r\n"
        if close:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if close:
            self.transport.close()
            self.transport = None


def _webhook_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def _verified(key: bytes, headers: dict[bytes, bytes], body: bytes, now: float) -> bool:
    """The Standard Webhooks check: a ``v1`` signature of ``id.timestamp.body`` under the
    service's secret, with a timestamp within five minutes of now."""
    message_id, stamp, signatures = headers.get(b"webhook-id"), headers.get(b"webhook-timestamp"), headers.get(b"webhook-signature")
    if not message_id or not stamp or not signatures or not stamp.isdigit() or abs(now - int(stamp)) > _TOLERANCE:
        return False
    expected = base64.b64encode(hmac.digest(key, message_id + b"." + stamp + b"." + body, "sha256"))
    return any(
        version == b"v1" and hmac.compare_digest(signature, expected)
        for version, _, signature in (item.partition(b",") for item in signatures.split())
    )


def _check_verifier() -> None:
    """This receiver's check agrees with the standardwebhooks library's signatures."""
    import datetime as dt

    from standardwebhooks.webhooks import Webhook

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    now = dt.datetime.now(dt.UTC)
    body = b'{"data":{"sub":"s","version":1}}'
    signature = Webhook(secret).sign("msg_1", now, body.decode()).encode()
    headers = {b"webhook-id": b"msg_1", b"webhook-timestamp": str(int(now.timestamp())).encode(), b"webhook-signature": signature}
    key = _webhook_key(secret)
    assert _verified(key, headers, body, now.timestamp()), "a signature made by standardwebhooks did not verify"
    assert not _verified(key, headers, body + b" ", now.timestamp()), "an altered body verified"
    assert not _verified(key, headers | {b"webhook-id": b"msg_2"}, body, now.timestamp()), "another message id verified"
    assert not _verified(key, headers, body, now.timestamp() + 2 * _TOLERANCE), "a stale timestamp verified"


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# -- CPU accounting ------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy so far (every core, every process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _postgres_pids(database: str) -> list[int]:
    """The Postgres backends serving ``database`` (their title names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres" and f" {database} " in (entry / "cmdline").read_text():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class CpuMeter:
    """CPU seconds used by each part of the bench between ``start`` and ``stop``."""

    def __init__(self, parts: dict[str, list[int]], postgres: str | None) -> None:
        self.parts = parts
        self.postgres = postgres

    def _sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, pids in self.parts.items():
            out[name] = {p: c for p in pids if (c := _cpu_of(p)) is not None}
        if self.postgres:
            out["postgres"] = {p: c for p in _postgres_pids(self.postgres) if (c := _cpu_of(p)) is not None}
        out["bench (writer)"] = {0: time.process_time()}
        return out

    def start(self) -> None:
        self.t0, self.before, self.machine = time.monotonic(), self._sample(), _machine_busy()

    def stop(self) -> dict[str, Any]:
        after, wall, machine = self._sample(), time.monotonic() - self.t0, _machine_busy() - self.machine
        used = {}
        for name, pids in after.items():
            base = self.before.get(name, {})
            used[name] = round(sum(c - base.get(p, 0.0) for p, c in pids.items()), 2)
        ours = sum(used.values())
        return {
            "wall_s": round(wall, 2),
            "cpu_s": used,
            "cores_busy": round(ours / wall, 2) if wall else None,
            # Whatever else ran on the machine meanwhile (other processes compete for the cores).
            "cores_busy_machine": round(machine / wall, 2) if wall else None,
            "cpu_s_others": round(max(0.0, machine - ours), 2),
        }


class CpuWindows:
    """The machine's cores busy, and each part's, in each ``WINDOW`` seconds of a scenario: read
    beside the p99 of the changes committed in the same window, whether a slow window was the
    machine busy with something else (other processes) or one part of the pipeline working
    harder than in the others."""

    def __init__(self, meter: CpuMeter) -> None:
        self.meter = meter
        self.samples: list[tuple[float, float, dict[str, float]]] = []  # (time, machine, part -> cpu)
        self.task: asyncio.Task[None] | None = None

    def _take(self) -> None:
        parts = {name: sum(pids.values()) for name, pids in self.meter._sample().items()}
        self.samples.append((time.time(), _machine_busy(), parts))

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self._take)  # /proc is read off the event loop
            await asyncio.sleep(WINDOW / 2)

    def start(self) -> None:
        self.samples.clear()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def by_window(self, t0: float, windows: int) -> list[dict[str, float]]:
        """Per window from ``t0`` (the first commit): cores busy, the machine's and each part's
        (from the samples nearest its edges; empty where there were none)."""
        out: list[dict[str, float]] = []
        for w in range(windows):
            start, end = t0 + w * WINDOW, t0 + (w + 1) * WINDOW
            a = min(self.samples, key=lambda s: abs(s[0] - start), default=None)
            b = min(self.samples, key=lambda s: abs(s[0] - end), default=None)
            if a is None or b is None or b[0] - a[0] <= 0:
                out.append({})
                continue
            span = b[0] - a[0]
            busy = {name: round((cpu - a[2].get(name, cpu)) / span, 2) for name, cpu in b[2].items()}
            busy["machine"] = round((b[1] - a[1]) / span, 2)
            busy["others"] = round(max(0.0, busy["machine"] - sum(v for k, v in busy.items() if k != "machine")), 2)
            out.append(busy)
        return out


# -- the sync processes --------------------------------------------------------------------------


class SyncProcesses:
    """One ``onesignin relay`` and ``workers`` ``onesignin worker`` subprocesses."""

    def __init__(self, env: dict[str, str], workers: int, logs: Path) -> None:
        self.env, self.workers, self.logs = env, workers, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs_of: dict[str, Path] = {}
        self.starts = 0

    async def start(self, names: list[str] | None = None) -> None:
        """Start the named processes (default: all), and wait until each answers /healthz."""
        self.starts += 1
        roles = {"relay": "relay"} | {f"worker{i + 1}": "worker" for i in range(self.workers)}
        started = {}
        for name in names or list(roles):
            port = free_port()
            self.logs_of[name] = self.logs / f"{name}.{self.starts}.log"
            self.procs[name] = spawn([sys.executable, "-m", "identity.cli", roles[name], "--port", str(port)], self.env, self.logs_of[name])
            started[name] = port
        async with aiohttp.ClientSession() as http:
            for name, port in started.items():
                for _ in range(300):
                    if self.procs[name].poll() is not None:
                        raise RuntimeError(f"onesignin {name} exited at start:\n{self.tail(name)}")
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"onesignin {name} did not answer /healthz:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs_of.get(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path and path.exists() else ""

    def warnings(self) -> dict[str, int]:
        """What the sync processes warned about (or failed at), counted by first line."""
        found: Counter[str] = Counter()
        for path in sorted(self.logs.glob("*.log")):
            if path.name.startswith("receiver"):
                continue
            for line in path.read_text(errors="replace").splitlines():
                if " WARNING " in line or " ERROR " in line:
                    message = line.split(" ", 3)[-1]
                    if "embedded SQLite database" in message:
                        continue
                    found[message.split("[SQL:")[0].strip()[:160]] += 1
        return dict(found.most_common())

    def pids(self) -> dict[str, list[int]]:
        return {name: [p.pid] for name, p in self.procs.items()}

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"onesignin {name} died (status {p.returncode}):\n{self.tail(name)}")

    async def stop(self, names: list[str] | None = None) -> None:
        """Stop the named processes (default: all) as an operator would: SIGTERM."""
        stopping = {name: p for name, p in self.procs.items() if names is None or name in names}
        for p in stopping.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in stopping.items():
            try:
                await asyncio.wait_for(asyncio.to_thread(p.wait), 30)
            except TimeoutError:
                say(f"  onesignin {name} did not stop within 30 s; killing it")
                p.kill()
                await asyncio.to_thread(p.wait)
            del self.procs[name]


# -- py-spy (optional) -----------------------------------------------------------------------------


class Profiler:
    """``py-spy record --format raw`` on each sync process during a scenario."""

    def __init__(self, out: Path | None, rate: int) -> None:
        self.out, self.rate = out, rate
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.binary = None
        if out is not None:
            self.binary = os.environ.get("PY_SPY") or shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
            if not self.binary:
                sys.exit("--profile needs py-spy (pip install py-spy, or set PY_SPY to its path)")
            out.mkdir(parents=True, exist_ok=True)

    def start(self, scenario: str, pids: dict[str, list[int]]) -> None:
        if self.binary is None or self.out is None:
            return
        for name, (pid, *_) in pids.items():
            path = self.out / f"{scenario}-{name}.txt"
            cmd = [self.binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw", "--nolineno", "--nonblocking", "--output", str(path)]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            self.running.append((name, proc, path))
        self.started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        wall = time.monotonic() - self.started if self.running else 0.0
        for name, proc, path in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if path.exists():
                summary = summarise_profile(path)
                # py-spy leaves out idle samples: what is left is the time the process was busy.
                busy = summary["samples"] / (self.rate * wall) if wall else None
                found[name] = {"file": str(path), "busy": round(busy, 2) if busy is not None else None, **summary}
            else:
                found[name] = {"error": (err or b"").decode(errors="replace").strip()[-300:]}
        self.running.clear()
        return found


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own time and by total time, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        own[_frame(frames[-1])] += n
        for f in {_frame(f) for f in frames}:
            total[f] += n
    pct = (lambda n: round(100.0 * n / samples, 1)) if samples else (lambda n: 0.0)
    return {
        "samples": samples,
        "own": [(f, pct(n)) for f, n in own.most_common(top)],
        "total": [(f, pct(n)) for f, n in total.most_common(top * 5)],
    }


def _frame(frame: str) -> str:
    # py-spy already shortens paths ("sync/deliver.py", "aiohttp/web.py"); drop line numbers.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if where[-1:].isdigit() and ":" in where:
        where = where.rsplit(":", 1)[0]
    return f"{name} ({where})" if where else name


# -- the hub's data ------------------------------------------------------------------------------


async def create_scratch_database(url: str) -> tuple[str, str]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin_url = make_url(url)
    if admin_url.drivername in ("postgresql", "postgres"):
        admin_url = admin_url.set(drivername="postgresql+asyncpg")
    name = f"osi_bench_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as c:
            await c.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return name, admin_url.set(database=name).render_as_string(hide_password=False)


async def drop_scratch_database(url: str, name: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin_url = make_url(url)
    if admin_url.drivername in ("postgresql", "postgres"):
        admin_url = admin_url.set(drivername="postgresql+asyncpg")
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as c:
            await c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def seed(sessions: Any, cipher: Any, services: int, people: int, receiver_port: int, *, cold: bool = False) -> tuple[dict[str, str], list[Any]]:
    """``services`` services with webhooks at the receivers and ``people`` accounts linked to
    every one of them (Link rows written directly: the OAuth flow is not what is measured), each
    link's snapshot delivered unless ``cold``."""
    from sqlalchemy import insert, select, text

    from identity import admin
    from identity.accounts.store import create_account
    from identity.db.models import Delivery, Link, Service, utcnow

    hooks: dict[str, str] = {}
    service_ids = []
    async with sessions.begin() as db:
        for i in range(services):
            name = f"s{i + 1}"
            made = await admin.add_service(
                db, name=f"Bench {name}", redirect_uris=[REDIRECT], webhook_url=f"http://127.0.0.1:{receiver_port}/hooks/{name}", cipher=cipher
            )
            assert made.webhook_secret is not None
            hooks[name] = made.webhook_secret
            service_ids.append(await db.scalar(select(Service.id).where(Service.client_id == made.client_id)))
    accounts = []
    for start in range(0, people, 500):
        async with sessions.begin() as db:
            chunk = []
            for i in range(start, min(people, start + 500)):
                account = await create_account(
                    db, email=f"p{i}@bench.example", password_hash="$bench$not-a-hash", details={"given_name": "P", "family_name": f"N{i}"}, channel="cli"
                )
                chunk.append(account)
            now = utcnow()
            await db.execute(
                insert(Link),
                [
                    {"account_id": a.id, "service_id": sid, "status": "active", "scope": SCOPE, "created_at": now, "updated_at": now}
                    for a in chunk
                    for sid in service_ids
                ],
            )
            if cold:
                accounts.extend(await _read_whole(db, chunk))
                continue
            # Each link's snapshot, delivered: the state of a hub whose people linked earlier.
            await db.execute(
                insert(Delivery),
                [
                    {
                        "service_id": sid, "account_id": a.id, "channel": "webhook", "wanted_version": a.version,
                        "delivered_version": a.version, "origin": "person", "next_attempt_at": now, "delivered_at": now,
                    }
                    for a in chunk
                    for sid in service_ids
                ],
            )
            accounts.extend(await _read_whole(db, chunk))
    async with sessions.begin() as db:
        if db.bind.dialect.name == "postgresql":
            # Planner statistics as autovacuum keeps them on a live hub, where people, links and
            # deliveries accumulate over days, not in the seconds of this seeding.
            await db.execute(text("ANALYZE"))
    return hooks, accounts


#: The member service whose changes the writer makes (not one of the receivers, so that every
#: change is due to all of them: a service is not sent back its own changes).
WRITER_CLIENT = "bench-writer"


async def _read_whole(db: Any, made: list[Any]) -> list[Any]:
    """The accounts just made, read whole as the API's token check reads them (a new account
    object lacks the details it was not given: a change to it would read the row first)."""
    from sqlalchemy import select

    from identity.db.models import Account

    found = {a.id: a for a in (await db.scalars(select(Account).where(Account.id.in_([a.id for a in made])).execution_options(populate_existing=True)))}
    return [found[a.id] for a in made]


class Writer:
    """Commits changes as a member service's ``PATCH /api/v1/me`` does, and keeps their commit
    times: ``change_at_once`` (on Postgres one statement committing on its own), or, where it
    cannot, ``update_details`` in a transaction (on SQLite). The accounts are kept between
    changes (this process is their only writer), as the token check reads them for the API, so
    a change costs what it costs the hub: UPDATE, change history and outbox row."""

    def __init__(self, sessions: Any, accounts: list[Any]) -> None:
        self.sessions = sessions
        self.accounts = accounts
        self.serial = 0
        self.commits: list[tuple[str, int, float]] = []  # (sub, version, commit time)

    async def change(self, index: int) -> None:
        from identity.accounts.store import change_at_once, update_details

        account = self.accounts[index]
        self.serial += 1
        changes = {"given_name": f"G{self.serial}"}
        changed = await change_at_once(
            self.sessions, account, changes, channel="service", actor=WRITER_CLIENT, client_id=WRITER_CLIENT, shared_only=True
        )
        if changed is None:
            async with self.sessions.begin() as db:
                db.add(account)
                changed = await update_details(db, account, changes, channel="service", actor=WRITER_CLIENT, client_id=WRITER_CLIENT)
        at = time.time()
        assert changed, "the change changed nothing"
        self.commits.append((account.sub, account.version, at))

    async def at_rate(self, people: range, rate: float, seconds: float, concurrency: int) -> dict[str, Any]:
        """``rate`` changes per second for ``seconds``, round-robin over ``people``."""
        total = int(rate * seconds)
        sem = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        worst_lag = 0.0
        for i in range(total):
            due = t0 + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            worst_lag = max(worst_lag, loop.time() - due)
            task = asyncio.create_task(self.change(people[i % len(people)]))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), sem.release()))
        await asyncio.gather(*tasks)
        return {"offered_changes": total, "schedule_worst_lag_s": round(worst_lag, 3)}

    async def burst(self, people: range, concurrency: int) -> None:
        queue = list(people)

        async def run() -> None:
            while queue:
                await self.change(queue.pop())

        await asyncio.gather(*(run() for _ in range(concurrency)))


# -- the scenarios -------------------------------------------------------------------------------


class Receivers:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))

    async def count(self) -> int:
        async with self.http.get(self.base + "/count") as r:
            return int((await r.json())["count"])

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(self.base + "/stats") as r:
            return await r.json()

    async def reset(self) -> None:
        async with self.http.post(self.base + "/reset") as r:
            r.raise_for_status()

    async def wait_for(self, commits: list[tuple[str, int, float]], services: list[str], sync: SyncProcesses, *, stall: float, timeout: float) -> bool:
        """Until every service holds the newest committed version of every person changed
        (True), or nothing arrived for ``stall`` seconds, or ``timeout`` passed (False)."""
        targets: dict[str, int] = {}
        for sub, version, _ in commits:
            targets[sub] = max(version, targets.get(sub, 0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last, last_change = -1, loop.time()
        async with self.http.post(self.base + "/expect", json={"targets": targets, "services": services}) as r:
            r.raise_for_status()
        while loop.time() < deadline:
            sync.check()
            async with self.http.get(self.base + "/reached") as r:
                progress = await r.json()
            if progress["reached"] >= progress["of"]:
                return True
            if progress["count"] != last:
                last, last_change = progress["count"], loop.time()
            elif loop.time() - last_change > stall:
                return False
            await asyncio.sleep(0.1)
        return False


def unit_costs(cpu: dict[str, Any], deliveries: int, changes: int) -> dict[str, float | None]:
    """CPU milliseconds per webhook delivery of each part (per change for the writer): a figure
    that holds up better than rates when other processes compete for the cores."""
    used = cpu["cpu_s"]
    out: dict[str, float | None] = {}
    sync_s = sum(v for k, v in used.items() if k == "relay" or k.startswith("worker"))
    for name, value in (("sync processes", sync_s), ("receiver", used.get("receiver")), ("postgres", used.get("postgres"))):
        if value is not None:
            out[f"{name}_ms_per_delivery"] = round(1000 * value / deliveries, 3) if deliveries else None
    out["writer_ms_per_change"] = round(1000 * used["bench (writer)"] / changes, 3) if changes else None
    # Everything the machine did, the load generator, the receivers and other processes included:
    # what a rate on this many cores allows (2 cores at 500 changes/s: 4 ms).
    machine_s = sum(used.values()) + cpu["cpu_s_others"]
    out["machine_ms_per_change"] = round(1000 * machine_s / changes, 3) if changes else None
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def first_arrivals(received: list[list[Any]]) -> dict[tuple[str, str], list[tuple[float, int]]]:
    """Per (service, sub): (arrival time, version), in arrival order."""
    out: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for at, name, sub, version in sorted(received):
        out[(name, sub)].append((at, version))
    return out


def match(commits: list[tuple[str, int, float]], received: list[list[Any]], services: list[str]) -> dict[str, Any]:
    """Latency of every (change, service): first arrival of that version or a later one."""
    arrivals = first_arrivals(received)
    latencies, missing, superseded = [], 0, 0
    t0 = min((c[2] for c in commits), default=0.0)
    windows: dict[int, list[float]] = defaultdict(list)
    for sub, version, committed in commits:
        for name in services:
            for at, got in arrivals.get((name, sub), ()):
                if got >= version:
                    latencies.append(at - committed)
                    windows[int((committed - t0) // WINDOW)].append(at - committed)
                    superseded += got > version
                    break
            else:
                missing += 1
    latencies.sort()
    keys = Counter((name, sub, version) for _, name, sub, version in received)
    return {
        "expected": len(commits) * len(services),
        "delivered": len(latencies),
        "missing": missing,
        "via_later_version": superseded,
        "duplicates": sum(n - 1 for n in keys.values() if n > 1),
        "latencies": latencies,
        # Whether a long tail is a queue that keeps growing or a passing stall.
        "p99_by_window_s": [round(percentile(sorted(windows[w]), 99), 3) for w in sorted(windows)],
    }


async def pending_in_db(sessions: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from identity.db.models import Delivery, OutboxEvent

    async with sessions() as db:
        outbox = await db.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None)))
        due = await db.scalar(select(func.count()).select_from(Delivery).where(Delivery.wanted_version > Delivery.delivered_version))
        failing = await db.scalar(select(func.count()).select_from(Delivery).where(Delivery.attempts > 0))
    return {"outbox_unpublished": int(outbox or 0), "deliveries_pending": int(due or 0), "deliveries_retrying": int(failing or 0)}


async def warm_up(writer: Writer, receivers: Receivers, sync: SyncProcesses, services: int, people: int) -> float:
    """A few changes, waited for at every service: topics made, partitions assigned, connections open."""
    started = time.monotonic()
    await receivers.reset()
    for i in range(min(people, 10)):
        await writer.change(i)
    if not await receivers.wait_for(writer.commits, [f"s{i + 1}" for i in range(services)], sync, stall=60, timeout=120):
        raise RuntimeError(f"the pipeline did not deliver the warm-up changes:\n{sync.tail('relay')}\n{sync.tail('worker1')}")
    writer.commits.clear()
    await receivers.reset()
    return time.monotonic() - started


async def scenario_latency(args: argparse.Namespace, writer: Writer, receivers: Receivers, sync: SyncProcesses, meter: CpuMeter, profiler: Profiler, sessions: Any) -> dict[str, Any]:
    names = [f"s{i + 1}" for i in range(args.services)]
    say(f"latency: {args.rate:g} changes/s for {args.seconds:g} s over {args.people} people, {args.services} services ...")
    meter.start()
    sampler = CpuWindows(meter)
    sampler.start()
    profiler.start("latency", sync.pids() | {"receiver": meter.parts["receiver"]})
    schedule = await writer.at_rate(range(args.people), args.rate, args.seconds, args.writers)
    committed = time.time()
    # A fan-out that reconnects to the embedded broker may need ~20 s to be given its partitions again.
    complete = await receivers.wait_for(writer.commits, names, sync, stall=40, timeout=max(120.0, args.seconds * 6))
    drained = time.time()
    await sampler.stop()
    cpu = meter.stop()
    profile = profiler.stop()
    stats = await receivers.stats()
    found = match(writer.commits, stats["received"], names)
    lat = found.pop("latencies")
    times = [c[2] for c in writer.commits]
    found["cores_busy_by_window"] = sampler.by_window(min(times, default=0.0), len(found["p99_by_window_s"]))
    span = (max(times) - min(times)) if len(times) > 1 else 0.0
    return {
        "offered_rate": args.rate,
        "achieved_rate": round((len(times) - 1) / span, 1) if span else None,
        "seconds": args.seconds,
        "changes": len(writer.commits),
        **schedule,
        **found,
        "complete": complete,
        "p50_s": round(percentile(lat, 50), 4),
        "p90_s": round(percentile(lat, 90), 4),
        "p99_s": round(percentile(lat, 99), 4),
        "max_s": round(lat[-1], 4) if lat else None,
        "mean_s": round(sum(lat) / len(lat), 4) if lat else None,
        "drain_after_last_commit_s": round(drained - committed, 2),
        "verified": stats["verified"],
        "rejected": stats["rejected"],
        "left_in_db": await pending_in_db(sessions),
        "cpu": cpu,
        "cpu_ms": unit_costs(cpu, len(stats["received"]), len(writer.commits)),
        **({"profile": profile} if profile else {}),
    }


async def scenario_throughput(args: argparse.Namespace, writer: Writer, receivers: Receivers, sync: SyncProcesses, meter: CpuMeter, profiler: Profiler, sessions: Any) -> dict[str, Any]:
    from sqlalchemy import delete

    from identity.db.models import Lease

    names = [f"s{i + 1}" for i in range(args.services)]
    people = range(args.burst)
    writer.commits.clear()
    await receivers.reset()
    out: dict[str, Any] = {"mode": args.burst_mode, "changes": args.burst}
    if args.burst_mode == "backlog":
        # Only the relay stops (the outbox fills up); the workers stay in their consumer group.
        say(f"throughput: queueing {args.burst} changes with the relay stopped ...")
        await sync.stop(["relay"])
        # A relay that stops keeps its lease until it expires (30 s); this one is gone for good.
        async with sessions.begin() as db:
            await db.execute(delete(Lease))
        t = time.monotonic()
        await writer.burst(people, args.writers)
        out["queue_s"] = round(time.monotonic() - t, 2)
        out["queue_rate"] = round(args.burst / (time.monotonic() - t), 1)
        say(f"  queued in {out['queue_s']} s; starting the relay ...")
        meter.parts = {"receiver": meter.parts["receiver"], "broker": meter.parts["broker"]}
        started = time.time()
        await sync.start(["relay"])
        meter.parts |= sync.pids()
        meter.start()
        profiler.start("throughput", sync.pids() | {"receiver": meter.parts["receiver"]})
        out["relay_start_s"] = round(time.time() - started, 2)
    else:
        say(f"throughput: queueing {args.burst} changes with the pipeline running ...")
        meter.start()
        profiler.start("throughput", sync.pids() | {"receiver": meter.parts["receiver"]})
        started = time.time()
        await writer.burst(people, args.writers)
        out["queue_s"] = round(time.time() - started, 2)
        out["queue_rate"] = round(args.burst / (time.time() - started), 1)
    expected = args.burst * args.services
    complete = await receivers.wait_for(writer.commits, names, sync, stall=40, timeout=600)
    cpu = meter.stop()
    profile = profiler.stop()
    stats = await receivers.stats()
    received = stats["received"]
    times = sorted(r[0] for r in received)
    found = match(writer.commits, received, names)
    found.pop("latencies")
    n = len(times)
    rate = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else None
    i10, i90 = int(n * 0.1), max(0, int(n * 0.9) - 1)
    middle = (i90 - i10) / (times[i90] - times[i10]) if n > 10 and times[i90] > times[i10] else None
    # The best and worst whole seconds between the first and the last delivery.
    per_second = Counter(int(t - times[0]) for t in times) if times else Counter()
    timeline = [per_second.get(s, 0) for s in range(int(times[-1] - times[0]) + 1)] if times else []
    whole = timeline[:-1]
    out.update(
        {
            "expected_deliveries": expected,
            "received_deliveries": n,
            **{k: v for k, v in found.items() if k != "expected"},
            "complete": complete,
            "deliveries_per_s": round(rate, 1) if rate else None,
            "deliveries_per_s_10_90": round(middle, 1) if middle else None,
            "best_second": max(whole) if whole else None,
            "worst_second": min(whole) if whole else None,
            "first_delivery_after_start_s": round(times[0] - started, 2) if times else None,
            "last_delivery_after_start_s": round(times[-1] - started, 2) if times else None,
            "first_to_last_s": round(times[-1] - times[0], 2) if n > 1 else None,
            "deliveries_each_second": timeline,
            "verified": stats["verified"],
            "rejected": stats["rejected"],
            "left_in_db": await pending_in_db(sessions),
            "cpu": cpu,
            "cpu_ms": unit_costs(cpu, n, args.burst if args.burst_mode == "live" else 0),
            **({"profile": profile} if profile else {}),
        }
    )
    return out


# -- main ------------------------------------------------------------------------------------------


def sync_settings_view(settings: Any) -> dict[str, Any]:
    keys = (
        "relay_batch_size", "relay_poll_interval", "sync_concurrency", "sync_service_concurrency",
        "kafka_profile_partitions", "database_pool_size", "webhook_timeout",
    )
    return {k: getattr(settings, k) for k in keys}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from identity.db.engine import create_engine, create_sessionmaker
    from identity.db.migrate import upgrade
    from identity.sealing import KeyCipher
    from identity.settings import load_settings
    from sync.broker import EmbeddedBroker

    postgres = args.database != "sqlite"
    profiler = Profiler(Path(args.profile) if args.profile else None, args.profile_rate)
    data_dir = Path(tempfile.mkdtemp(prefix="onesignin-bench-sync-"))
    logs = data_dir / "logs"
    logs.mkdir()
    secret_key = secrets.token_urlsafe(48)
    scratch = None
    broker = None
    receiver = None
    sync = None
    engine = None
    receivers = None
    try:
        if postgres:
            scratch, db_url = await create_scratch_database(args.database)
        else:
            db_url = f"sqlite+aiosqlite:///{data_dir / 'onesignin.db'}"
        if args.kafka:
            bootstrap = args.kafka
        else:
            broker = EmbeddedBroker()
            await broker.start()
            bootstrap = broker.bootstrap
        extra = dict(item.split("=", 1) for item in args.sync_env)
        env = os.environ | {
            "ONESIGNIN_DATA_DIR": str(data_dir),
            "ONESIGNIN_DATABASE_URL": db_url,
            "ONESIGNIN_SECRET_KEY": secret_key,
            "ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ONESIGNIN_KAFKA_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:8]}." if args.kafka else "",
            # The embedded broker (Tansu) has no idempotent producers.
            "ONESIGNIN_KAFKA_ENABLE_IDEMPOTENCE": "true" if args.kafka else "false",
            # The receivers listen on loopback, which webhooks may reach only when allowed.
            "ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        } | extra
        os.environ.update({k: v for k, v in env.items() if k.startswith("ONESIGNIN_")})
        settings = load_settings()
        engine = create_engine(settings)
        await upgrade(engine)
        sessions = create_sessionmaker(engine)

        receiver_port = free_port()
        people = max(args.people, args.burst)
        say(f"seeding {args.services} services and {people} people, each linked to every service ...")
        t = time.monotonic()
        hooks, accounts = await seed(sessions, KeyCipher(secret_key), args.services, people, receiver_port, cold=args.cold)
        seed_s = time.monotonic() - t

        receiver = spawn(
            [sys.executable, os.path.abspath(__file__), "_receiver", "--port", str(receiver_port), "--verify-every", str(args.verify_every)],
            None, logs / "receiver.log", stdin=subprocess.PIPE,
        )
        assert receiver.stdin is not None
        receiver.stdin.write((json.dumps(hooks) + "\n").encode())
        receiver.stdin.close()
        receivers = Receivers(f"http://127.0.0.1:{receiver_port}")
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                await receivers.count()
                break
            if receiver.poll() is not None:
                raise RuntimeError("the receiver process exited: " + (logs / "receiver.log").read_text())
            await asyncio.sleep(0.05)

        sync = SyncProcesses(env, args.workers, logs)
        await sync.start()
        writer = Writer(sessions, accounts)
        warm = await warm_up(writer, receivers, sync, args.services, args.people)
        parts = {"receiver": [receiver.pid], "broker": [broker.process.pid] if broker and broker.process else []} | sync.pids()
        meter = CpuMeter(parts, scratch)

        result: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "cpus_usable": len(os.sched_getaffinity(0)),
                "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
            },
            "settings": {
                "database": "postgres" if postgres else "sqlite",
                "broker": f"kafka {args.kafka}" if args.kafka else "embedded (Tansu)",
                "services": args.services,
                "people": args.people,
                "people_seeded": people,
                "seeded": "links only (cold)" if args.cold else "links with their snapshots delivered",
                "scope": SCOPE,
                "relay_processes": 1,
                "worker_processes": args.workers,
                "verify_every": args.verify_every,
                "writer_concurrency": args.writers,
                **sync_settings_view(settings),
                **({"sync_env": extra} if extra else {}),
            },
            "setup": {"seed_s": round(seed_s, 2), "warm_up_s": round(warm, 2)},
            "targets": {
                "latency_p99_s": LATENCY_TARGET_P99, "at_rate": 200, "services": 5, "deliveries_per_s": THROUGHPUT_TARGET,
                "high_load": {"latency_p99_s": HIGH_LOAD_P99, "at_rate": HIGH_LOAD_RATE, "workers": 2, "seconds": 60},
            },
        }
        if "latency" in args.scenarios:
            result["latency"] = await scenario_latency(args, writer, receivers, sync, meter, profiler, sessions)
        if "throughput" in args.scenarios:
            result["throughput"] = await scenario_throughput(args, writer, receivers, sync, meter, profiler, sessions)
        result["sync_warnings"] = sync.warnings()
        result["logs"] = str(logs) if args.keep else None
        return result
    finally:
        if sync is not None:
            await sync.stop()
        if receivers is not None:
            await receivers.http.close()
        if receiver is not None and receiver.poll() is None:
            receiver.terminate()
            receiver.wait(10)
        if broker is not None:
            await broker.stop()
        if engine is not None:
            await engine.dispose()
        if scratch:
            await drop_scratch_database(args.database, scratch)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def print_table(r: dict[str, Any]) -> None:
    m, s = r["machine"], r["settings"]
    print(f"machine: {m['cpus']} CPUs ({m['cpus_usable']} usable), load average at start {' '.join(map(str, m['load_average_at_start']))}, Python {m['python']}")
    print(
        f"settings: database {s['database']}, broker {s['broker']}, {s['services']} services, {s['people']} people "
        f"({s['people_seeded']} seeded) linked to every service with scope '{s['scope']}'; seeded: {s['seeded']}"
    )
    print(
        f"  1 relay + {s['worker_processes']} worker process(es); receivers verify 1 delivery in {s['verify_every']}; "
        f"writer concurrency {s['writer_concurrency']}; relay_batch_size {s['relay_batch_size']}, relay_poll_interval {s['relay_poll_interval']} s, "
        f"sync_concurrency {s['sync_concurrency']}, sync_service_concurrency {s['sync_service_concurrency']}, "
        f"kafka_profile_partitions {s['kafka_profile_partitions']}" + (f", {s['sync_env']}" if s.get("sync_env") else "")
    )
    print(f"  setup: seeding {r['setup']['seed_s']} s, warm-up {r['setup']['warm_up_s']} s")
    row = "  {:<44} {:>12}   {:<22} {}"
    lat = r.get("latency")
    if lat:
        print()
        print(f"latency: {lat['offered_rate']:g} changes/s offered for {lat['seconds']:g} s ({lat['achieved_rate']} achieved), "
              f"{lat['changes']} changes x {s['services']} services")
        print(row.format("figure", "value", "target", ""))
        print(row.format("deliveries arrived / expected", f"{lat['delivered']}/{lat['expected']}", "all", verdict(lat["missing"] == 0)))
        print(row.format("  of which through a later version", lat["via_later_version"], "", ""))
        print(row.format("  duplicates", lat["duplicates"], "", ""))
        limit = p99_target(lat["offered_rate"])
        for key in ("p50", "p90", "p99", "max"):
            target = f"<= {limit:g} s" if key == "p99" else ""
            value = lat[f"{key}_s"]
            ok = (value <= limit and lat["missing"] == 0) if key == "p99" else None
            print(row.format(f"commit -> webhook received, {key}", f"{value:.3f} s", target, verdict(ok)))
        print(f"  p99 of the changes committed in each {WINDOW:g} s: " + " ".join(f"{v:.2f}" for v in lat["p99_by_window_s"]))
        print("  cores busy in each of those windows, the whole machine: " + " ".join(f"{w['machine']:.2f}" if w else "-" for w in lat["cores_busy_by_window"]))
        slow = [(i, w) for i, (p99, w) in enumerate(zip(lat["p99_by_window_s"], lat["cores_busy_by_window"], strict=True)) if p99 > HIGH_LOAD_P99 and w]
        for i, w in slow:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(w.items(), key=lambda kv: -kv[1]) if k != "machine")
            print(f"    window {i + 1} (p99 {lat['p99_by_window_s'][i]:.2f} s): machine {w['machine']:.2f} cores; {parts}")
        print(row.format("drained after the last commit", f"{lat['drain_after_last_commit_s']} s", "", ""))
        print(row.format("writer schedule, worst lag", f"{lat['schedule_worst_lag_s']} s", "", ""))
        print(row.format("signatures verified / rejected", f"{lat['verified']}/{lat['rejected']}", "", ""))
        print(row.format("left in the database", " ".join(f"{k}={v}" for k, v in lat["left_in_db"].items()), "", ""))
        print_cpu(lat["cpu"], lat["cpu_ms"])
        if lat["achieved_rate"] and lat["achieved_rate"] < 0.95 * lat["offered_rate"]:
            print(f"  NOTE: the writer fell behind ({lat['achieved_rate']} of {lat['offered_rate']:g} changes/s): the cores were saturated")
        print_profile(lat.get("profile"))
    tp = r.get("throughput")
    if tp:
        print()
        how = "queued in the outbox with the relay stopped, then the relay started" if tp["mode"] == "backlog" else "queued with the pipeline running"
        print(f"throughput: burst of {tp['changes']} changes x {s['services']} services ({how}; queued at {tp['queue_rate']} changes/s)")
        print(row.format("figure", "value", "target", ""))
        print(row.format("deliveries received / expected", f"{tp['received_deliveries']}/{tp['expected_deliveries']}", "all", verdict(tp["missing"] == 0)))
        rate = tp["deliveries_per_s"]
        print(row.format("deliveries/s, first to last", f"{rate:.0f}" if rate else "-", f">= {THROUGHPUT_TARGET:g}/s", verdict(bool(rate and rate >= THROUGHPUT_TARGET))))
        middle = tp["deliveries_per_s_10_90"]
        print(row.format("deliveries/s, 10% to 90% of them", f"{middle:.0f}" if middle else "-", "", ""))
        print(row.format("best / worst whole second", f"{tp['best_second']}/{tp['worst_second']}", "", ""))
        print(f"  deliveries in each second from the first: {' '.join(map(str, tp['deliveries_each_second']))}")
        if tp["mode"] == "backlog":
            print(row.format("relay up after", f"{tp['relay_start_s']} s", "", ""))
        print(row.format("first delivery after start", f"{tp['first_delivery_after_start_s']} s", "", ""))
        print(row.format("first to last delivery", f"{tp['first_to_last_s']} s", "", ""))
        print(row.format("signatures verified / rejected", f"{tp['verified']}/{tp['rejected']}", "", ""))
        print(row.format("left in the database", " ".join(f"{k}={v}" for k, v in tp["left_in_db"].items()), "", ""))
        print_cpu(tp["cpu"], tp["cpu_ms"])
        print_profile(tp.get("profile"))
    if r.get("sync_warnings"):
        print()
        print("the sync processes logged these warnings (count, message):")
        for message, n in r["sync_warnings"].items():
            print(f"  {n:4d}  {message}")


def print_cpu(cpu: dict[str, Any], per_unit: dict[str, Any]) -> None:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu["cpu_s"].items(), key=lambda kv: -kv[1]))
    print(f"  CPU seconds over {cpu['wall_s']} s ({cpu['cores_busy']} cores busy): {parts}")
    print(f"  the whole machine: {cpu['cores_busy_machine']} cores busy; other processes used {cpu['cpu_s_others']} CPU seconds")
    print("  CPU ms per delivery: " + ", ".join(f"{k.removesuffix('_ms_per_delivery').replace('_ms_per_change', ' per change')} {v}" for k, v in per_unit.items() if v is not None))


def print_profile(profile: dict[str, Any] | None) -> None:
    for name, found in (profile or {}).items():
        if "error" in found:
            print(f"  py-spy {name}: {found['error']}")
            continue
        print(f"  py-spy {name}: busy {found['busy']} of the time ({found['samples']} samples in {found['file']})")
        print("    own time:")
        for frame, pct in found["own"][:12]:
            print(f"      {pct:5.1f}%  {frame}")
        ours = [f for f in found["total"] if f[0].split(" (")[-1].startswith(("identity/", "sync/", "schemas/"))]
        if ours:
            print("    total time (the function and what it calls), project code:")
            for frame, pct in ours[:12]:
                print(f"      {pct:5.1f}%  {frame}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_receiver":
        receiver_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="'sqlite' (a fresh file in a temp dir) or a Postgres URL: a scratch database is created beside it and dropped afterwards")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="use this Kafka (topics get a unique prefix) instead of starting the embedded broker")
    parser.add_argument("--services", type=int, default=5, help="member services, each with a webhook at the receivers (default 5)")
    parser.add_argument("--people", type=int, default=1000, help="people the latency scenario changes, round-robin (default 1000)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency: changes per second (default 200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency: how long (default 20)")
    parser.add_argument("--cold", action="store_true", help="seed links only, no delivered snapshots (see above)")
    parser.add_argument("--burst", type=int, default=3000, help="throughput: changes in the burst, to distinct people (default 3000)")
    parser.add_argument("--burst-mode", choices=["backlog", "live"], default="backlog", help="throughput: queue the burst with the relay stopped (default) or the pipeline running")
    parser.add_argument("--workers", type=int, default=1, help="`onesignin worker` processes (default 1; one `onesignin relay` runs too)")
    parser.add_argument("--verify-every", type=int, default=1, help="receivers verify the signature of 1 delivery in K (default 1: all)")
    parser.add_argument("--writers", type=int, default=8, help="changes being committed at once by this process (default 8)")
    parser.add_argument("--scenarios", default="latency,throughput", help="comma-separated: latency, throughput (default both)")
    parser.add_argument("--sync-env", action="append", default=[], metavar="ONESIGNIN_X=V", help="extra setting for every process (repeatable), e.g. ONESIGNIN_SYNC_CONCURRENCY=512")
    parser.add_argument("--profile", metavar="DIR", help="record each sync process with py-spy during each scenario (collapsed stacks in DIR) and show the top functions")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (processes' logs, the SQLite file)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if not args.scenarios <= {"latency", "throughput"}:
        parser.error("--scenarios takes latency and/or throughput")
    if args.people < 20 or args.people < args.writers * 2:
        parser.error("--people must be at least 20 and at least twice --writers")
    for item in args.sync_env:
        if "=" not in item or not item.startswith("ONESIGNIN_"):
            parser.error(f"--sync-env wants ONESIGNIN_NAME=VALUE, not {item!r}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        result = runner.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
