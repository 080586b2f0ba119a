#!/usr/bin/env python3
"""The hub beside node-oidc-provider (OpenID Certified; pinned in bench/peer/package.json): the
``client_credentials`` grant and the introspection of a service token, per second, each server
driven by the same load generator with the same flags, the two alternated in every round: each
figure of a round is ``--seconds`` of each server, taken in ``--slice``-second turns, so that both
meet the machine as it is in the same seconds.

The peer runs as one Node process with its in-memory storage and opaque access tokens (its
cheapest configuration, bench/peer/peer.mjs); the hub as one ``onesignin serve --no-sync`` process
on the database given, as compose.yaml runs it (the outbox relay and the sync worker are processes
of their own there, and the peer has no such pipeline). Both answer on loopback; load comes from
``wrk`` (one thread). Beside each rate it prints the CPU each server used for it (every thread
of the processes serving: the peer's one, the hub's one or its workers; from /proc, as
bench_hub): one Node process is not one core, as V8 collects garbage and compiles on helper
threads, so CPU per request is shown too, with its own ratio.

    apt-get install wrk nodejs npm      # once
    python bench/bench_peer.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/test

The interpreter counts: CPython built with profile-guided and link-time optimisation (as the
``python`` images the Dockerfile starts from, and Debian's ``python3``) runs the hub faster than a
plain build (pyenv's default); ``--hub-python`` serves the hub with another virtualenv's Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hub import REDIRECT, Wrk, cli, cpu_seconds, free_port  # noqa: E402

PEER = Path(__file__).resolve().parent / "peer"
FIGURES = ("client_credentials", "introspection")


async def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if process.poll() is not None:
                sys.exit(f"{url}: the server exited ({process.returncode})")
            try:
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    sys.exit(f"{url}: the server did not come up")


async def _token_and_check(base: str, token_path: str, introspection_path: str, auth: str, scope: str) -> str:
    """A service token from ``base``, checked active at its introspection endpoint (what every
    measured request then does)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(base + token_path, data={"grant_type": "client_credentials", "scope": scope}, headers={"Authorization": auth}) as r:
            body = await r.json()
            if r.status != 200:
                sys.exit(f"{base}: client_credentials answered {r.status}: {body}")
        token = body["access_token"]
        async with http.post(base + introspection_path, data={"token": token}, headers={"Authorization": auth}) as r:
            seen = await r.json()
            if r.status != 200 or seen.get("active") is not True:
                sys.exit(f"{base}: introspection answered {r.status}: {seen}")
    return token


async def _all_workers_up(process: subprocess.Popen[bytes], workers: int) -> None:
    """With ``--workers N`` (N > 1): until the parent has N children (Linux /proc)."""
    if workers <= 1 or not Path("/proc/self/task").exists():
        return
    for _ in range(300):
        children = set()
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            children |= set((task / "children").read_text().split())
        if len(children) >= workers:
            return
        await asyncio.sleep(0.1)
    sys.exit(f"the hub did not start {workers} workers")


class Target:
    """One server under test: where its endpoints are and how to call them."""

    def __init__(self, name: str, base: str, token_path: str, introspection_path: str, auth: str, scope: str) -> None:
        self.name, self.base, self.token_path, self.introspection_path = name, base, token_path, introspection_path
        self.auth, self.scope, self.token = auth, scope, ""

    def lua(self, figure: str) -> tuple[str, str]:
        if figure == "client_credentials":
            body = f"grant_type=client_credentials&scope={self.scope}"
            path = self.token_path
        else:
            body = f"token={self.token}"
            path = self.introspection_path
        return path, (
            'wrk.method = "POST"\n'
            f'wrk.body = "{body}"\n'
            'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
            f'wrk.headers["Authorization"] = "{self.auth}"\n'
        )


@contextmanager
def hub_process(database: str, workers: int = 1, python: str = sys.executable) -> Iterator[tuple[Target, subprocess.Popen[bytes]]]:
    data_dir = Path(tempfile.mkdtemp(prefix="onesignin-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"ONESIGNIN_DATA_DIR": str(data_dir), "ONESIGNIN_ISSUER": base, "ONESIGNIN_SECRET_KEY": secrets.token_urlsafe(48)}
    scratch_db = None
    if database != "sqlite":
        scratch_db = f"osi_bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(["psql", database.replace("+asyncpg", ""), "-qc", f'CREATE DATABASE "{scratch_db}"'], check=True)
        env["ONESIGNIN_DATABASE_URL"] = database.rsplit("/", 1)[0] + "/" + scratch_db
        cli(env, "migrate")
    service = cli(env, "services", "add", "--name", "Bench", "--redirect-uri", REDIRECT)
    process = subprocess.Popen(
        [python, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", "0", "--no-sync", "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        auth = aiohttp.encode_basic_auth(service["client_id"], service["client_secret"])
        yield Target("hub", base, "/token", "/introspect", auth, "openid"), process
    finally:
        process.terminate()
        process.wait(timeout=30)
        if scratch_db:
            subprocess.run(["psql", database.replace("+asyncpg", ""), "-qc", f'DROP DATABASE "{scratch_db}" WITH (FORCE)'], check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def peer_process() -> Iterator[tuple[Target, subprocess.Popen[bytes]]]:
    if not shutil.which("node") or not shutil.which("npm"):
        sys.exit("bench_peer needs Node.js and npm (Debian: apt-get install nodejs npm)")
    if not (PEER / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    client_id, client_secret = "bench", secrets.token_urlsafe(32)
    process = subprocess.Popen(
        ["node", "peer.mjs"], cwd=PEER, env=os.environ | {"PORT": str(port), "CLIENT_ID": client_id, "CLIENT_SECRET": client_secret},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        auth = aiohttp.encode_basic_auth(client_id, client_secret)
        yield Target("node-oidc-provider", f"http://127.0.0.1:{port}", "/token", "/token/introspection", auth, "api"), process
    finally:
        process.terminate()
        process.wait(timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="the hub's database: 'sqlite' (embedded) or a Postgres URL the bench may create databases in")
    parser.add_argument("--seconds", type=float, default=10.0, help="each server's time per figure in each round (default 10)")
    parser.add_argument(
        "--slice", type=int, default=2,
        help="whole seconds of one server at a time: a round's --seconds are slices of each, alternated (default 2)",
    )
    parser.add_argument("--connections", type=int, default=20, help="requests in flight (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    parser.add_argument(
        "--hub-workers", type=int, default=1,
        help="hub processes (serve --workers; default 1, as the peer's one process; more needs Postgres)",
    )
    parser.add_argument(
        "--hub-python", default=sys.executable,
        help="the Python the hub is served with (a virtualenv's, with the hub installed; default: this one)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench_peer needs wrk (Debian: apt-get install wrk)")

    scripts = Path(tempfile.mkdtemp(prefix="onesignin-wrk-"))
    runs: dict[str, dict[str, list[float]]] = {figure: {"hub": [], "peer": []} for figure in FIGURES}
    # CPU microseconds per answered request, each server's processes and threads together.
    cost: dict[str, dict[str, list[float | None]]] = {figure: {"hub": [], "peer": []} for figure in FIGURES}
    try:
        with hub_process(args.database, args.hub_workers, args.hub_python) as (hub, hub_proc), peer_process() as (peer, peer_proc):
            await _wait_until_up(hub.base + "/healthz", hub_proc)
            await _all_workers_up(hub_proc, args.hub_workers)
            await _wait_until_up(peer.base + "/.well-known/openid-configuration", peer_proc)
            for target in (hub, peer):
                target.token = await _token_and_check(target.base, target.token_path, target.introspection_path, target.auth, target.scope)
            for round_ in range(args.rounds):
                for figure in FIGURES:
                    # A run of --seconds is --slice-second slices of each server, alternated
                    # (the first of each pair alternating too): both meet the machine as it is
                    # in the same seconds, where a virtual machine's speed drifts by a third
                    # within a minute.
                    answered = {"hub": 0, "peer": 0}
                    took = {"hub": 0.0, "peer": 0.0}
                    used: dict[str, float | None] = {"hub": 0.0, "peer": 0.0}
                    for n in range(max(1, round(args.seconds / args.slice))):
                        order = [(hub, "hub"), (peer, "peer")] if (round_ + n) % 2 == 0 else [(peer, "peer"), (hub, "hub")]
                        for target, key in order:
                            path, lua = target.lua(figure)
                            # The processes serving: the peer's one (its threads included), the
                            # hub's one or its workers.
                            pid, processes = (hub_proc.pid, args.hub_workers) if key == "hub" else (peer_proc.pid, 1)
                            before = cpu_seconds(pid, processes)
                            ok, seconds = Wrk(target.base, scripts, args.slice, args.connections).answered(path, lua)
                            after = cpu_seconds(pid, processes)
                            answered[key] += ok
                            took[key] += seconds
                            spent = used[key]
                            used[key] = None if spent is None or not before or not after else spent + sum(after[p] - before[p] for p in after if p in before)
                    for target, key in ((hub, "hub"), (peer, "peer")):
                        rate = answered[key] / took[key]
                        runs[figure][key].append(rate)
                        line = f"  round {round_ + 1}: {target.name:20s} {figure:20s} {rate:9.0f}/s"
                        per_request = None
                        spent = used[key]
                        if spent is not None and answered[key]:
                            per_request = spent / answered[key] * 1e6
                            line += f"  {spent / took[key]:4.2f} cores  {per_request:5.0f} µs CPU per request"
                        cost[figure][key].append(per_request)
                        if not args.json:
                            print(line, flush=True)
    finally:
        shutil.rmtree(scripts, ignore_errors=True)

    results = {
        figure: {
            "hub_per_s": runs[figure]["hub"],
            "peer_per_s": runs[figure]["peer"],
            "ratios": [h / p for h, p in zip(runs[figure]["hub"], runs[figure]["peer"], strict=True)],
            "hub_cpu_us_per_request": cost[figure]["hub"],
            "peer_cpu_us_per_request": cost[figure]["peer"],
            # Above 1: a hub answer costs the machine less CPU than the peer's.
            "cpu_ratios": [p / h if h and p else None for h, p in zip(cost[figure]["hub"], cost[figure]["peer"], strict=True)],
        }
        for figure in FIGURES
    }
    if args.json:
        print(json.dumps({"database": args.database.split(":")[0], "hub_workers": args.hub_workers, "connections": args.connections, "seconds": args.seconds, "slice": args.slice, "hub_python": args.hub_python, **results}, indent=2))
        return
    python = subprocess.run([args.hub_python, "-c", "import sys; print(sys.version.split()[0], sys._base_executable)"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"hub on {'SQLite (embedded)' if args.database == 'sqlite' else 'Postgres'}, Python {python}, {args.hub_workers} process(es); {os.cpu_count()} cores; {args.connections} connections, {args.seconds:.0f} s of each server per figure and round, in {args.slice} s turns")
    print(f"  {'figure':20s} {'hub (median)':>14s} {'peer (median)':>14s}  ratio per round")
    for figure, r in results.items():
        ratios = " ".join(f"{x:.2f}" for x in r["ratios"])
        print(f"  {figure:20s} {statistics.median(r['hub_per_s']):14.0f} {statistics.median(r['peer_per_s']):14.0f}  {ratios}")
    if all(x is not None for r in results.values() for x in r["cpu_ratios"]):
        # One Node process is not one core: V8 collects garbage and compiles on helper threads.
        print("  CPU per request (every thread of each server's serving processes); ratio = peer's / hub's, above 1: the hub's is cheaper")
        print(f"  {'figure':20s} {'hub µs (median)':>16s} {'peer µs (median)':>17s}  ratio per round")
        for figure, r in results.items():
            ratios = " ".join(f"{x:.2f}" for x in r["cpu_ratios"])
            hub_us, peer_us = statistics.median(r["hub_cpu_us_per_request"]), statistics.median(r["peer_cpu_us_per_request"])
            print(f"  {figure:20s} {hub_us:16.0f} {peer_us:17.0f}  {ratios}")


if __name__ == "__main__":
    asyncio.run(main())
