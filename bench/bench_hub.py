#!/usr/bin/env python3
"""Throughput of the hub (one process unless --workers): client_credentials grants/s, refresh
grants/s, password sign-ins/s (full form POST; from browsers the people signed in with before,
and from browsers new to them, whose sign-ins are mailed to the people), userinfo and
introspection requests/s, against the argon2id hash rate.

The hub runs as a real ``onesignin serve`` subprocess; load comes over loopback HTTP from this
process (which shares the machine's cores with the hub: figures are for the whole machine).

    python bench/bench_hub.py --database sqlite
    python bench/bench_hub.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/test

With several ``--workers`` counts (Postgres only), it measures client_credentials grants/s only,
with a fresh ``serve --workers N`` for each count in turn, alternating over ``--rounds`` rounds
(a shared machine drifts: alternating spreads the drift over every count):

    python bench/bench_hub.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/test --workers 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp

PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:9/callback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "identity.cli", *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


async def sign_in_and_authorize(base: str, client_id: str, client_secret: str, email: str) -> str:
    """A full code flow for ``email`` (sign in, consent when asked); returns a refresh token."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:

        async def follow(response: aiohttp.ClientResponse) -> tuple[str, str]:
            """Follow redirects inside the hub; return (page, callback URL or '')."""
            while response.status in (302, 303):
                location = response.headers["Location"]
                if location.startswith(REDIRECT):
                    return "", location
                response = await http.get(base + location if location.startswith("/") else location, allow_redirects=False)
            return await response.text(), ""

        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "scope": "openid profile email offline_access",
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        page, callback = await follow(await http.get(f"{base}/authorize", params=params, allow_redirects=False))
        for _ in range(3):
            if callback:
                break
            found = re.search(r'<form method="post" action="([^"]+)"', page)
            if found is None:
                title = re.search(r"<title>([^<]*)</title>", page)
                raise RuntimeError(f"unexpected page in the sign-in flow: {title.group(1) if title else page[:200]}")
            action = found.group(1)
            fields = dict(_INPUT.findall(page))
            extra = {"email": email, "password": PASSWORD} if action.endswith("/login") else {"decision": "allow"}
            page, callback = await follow(await http.post(base + action, data=fields | extra, allow_redirects=False))
        code = parse_qs(urlsplit(callback).query)["code"][0]
        async with http.post(
            f"{base}/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
            headers={"Authorization": aiohttp.encode_basic_auth(client_id, client_secret)},
        ) as r:
            token = await r.json()
        return token["refresh_token"]


async def device_cookie(base: str, email: str) -> str:
    """The device cookie a browser keeps once ``email`` signed in with it (its next sign-ins there
    are from a known browser)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/sign-in") as r:
            fields = dict(_INPUT.findall(await r.text()))
        async with http.post(f"{base}/sign-in", data=fields | {"email": email, "password": PASSWORD}, allow_redirects=False) as r:
            if r.status != 303:
                raise RuntimeError(f"signing {email} in answered {r.status}")
        found = [c.value for c in http.cookie_jar if c.key == "osi_device"]
        if not found:
            raise RuntimeError(f"no device cookie after signing {email} in")
        return found[0]


LUA_STATIC_POST = """
wrk.method = "POST"
wrk.body = "{body}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "{auth}"
"""

LUA_REFRESH = """
local queue = {{ {tokens} }}
request = function()
  local rt = table.remove(queue, 1)
  return wrk.format("POST", nil, {{["Content-Type"] = "application/x-www-form-urlencoded", ["Authorization"] = "{auth}"}},
    "grant_type=refresh_token&refresh_token=" .. rt)
end
response = function(status, headers, body)
  local rt = body:match('"refresh_token":%s*"([^"]+)"')
  if rt then table.insert(queue, rt) end
end
"""

LUA_USERINFO = """
local tokens = {{ {tokens} }}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", nil, {{["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1]}})
end
"""

LUA_INTROSPECT = """
local tokens = {{ {tokens} }}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", nil, {{["Content-Type"] = "application/x-www-form-urlencoded", ["Authorization"] = "{auth}"}},
    "token=" .. tokens[(i % #tokens) + 1])
end
"""

LUA_SIGN_IN = """
local i = 0
local devices = {{ {devices} }}
request = function()
  i = i + 1
  local n = i % {users}
  local body = "csrf_token={csrf}&email=p" .. n .. "%40example.com&password={password}"
  local cookie = "osi_csrf={cookie}"
  if #devices > 0 then cookie = cookie .. "; osi_device=" .. devices[n + 1] end
  return wrk.format("POST", nil, {{["Content-Type"] = "application/x-www-form-urlencoded", ["Cookie"] = cookie}}, body)
end
"""


class Wrk:
    """Load from wrk (C, one thread), so the hub, not the load generator, gets the cores."""

    def __init__(self, base: str, scripts: Path, seconds: float, connections: int) -> None:
        self.base, self.scripts, self.seconds, self.connections = base, scripts, seconds, connections

    def run(self, path: str, lua: str, seconds: float | None = None) -> float:
        """Requests per second answered without an error status (>= 400)."""
        ok, took = self.answered(path, lua, seconds)
        return ok / took

    def answered(self, path: str, lua: str, seconds: float | None = None) -> tuple[int, float]:
        """Requests answered without an error status (>= 400), and wrk's seconds."""
        script = self.scripts / f"s{len(list(self.scripts.iterdir()))}.lua"
        script.write_text(lua + _WRK_DONE)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{self.connections}", f"-d{int(seconds or self.seconds)}s", "-s", str(script), self.base + path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        stats = json.loads(out[out.index("{") :])
        ok = stats["requests"] - stats["non_ok"] - stats["errors"]
        if stats["non_ok"] or stats["errors"]:
            print(f"  {path}: {stats['non_ok']} unexpected statuses, {stats['errors']} socket errors", file=sys.stderr)
        return ok, stats["seconds"]


_WRK_DONE = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format('{"requests": %d, "seconds": %f, "errors": %d, "non_ok": %d, "p50_ms": %f, "p99_ms": %f}',
    summary.requests, summary.duration / 1e6, errors - summary.errors.status, summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def start_hub(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    """``onesignin serve --workers N`` (its log in ``log``); returns once every worker serves."""
    errors = log.open("wb")
    hub = subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", "0", "--workers", str(workers)],
        env=env, stderr=errors, stdout=subprocess.DEVNULL,
    )
    errors.close()
    deadline = time.monotonic() + 120
    ready = "workers serving" if workers > 1 else "metrics at"
    while ready not in log.read_text(errors="replace"):
        if hub.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the hub did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return hub
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop_hub(hub: subprocess.Popen[bytes]) -> None:
    hub.terminate()
    hub.wait(timeout=120)


def cpu_seconds(pid: int, workers: int) -> dict[int, float]:
    """CPU time (user + system) of the hub's processes serving HTTP, by pid: the hub itself, or
    with several workers its children (Linux /proc; else empty)."""
    found: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        kids = [int(p) for task in Path(f"/proc/{pid}/task").iterdir() for p in (task / "children").read_text().split()] if workers > 1 else [pid]
    except OSError:
        return found
    for kid in kids:
        try:
            fields = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[kid] = (int(fields[11]) + int(fields[12])) / tick
    return found


def compare_workers(env: dict[str, str], port: int, service: dict, args: argparse.Namespace, scratch: Path) -> dict:
    """client_credentials grants/s for each --workers count, alternating over --rounds rounds."""
    base = f"http://127.0.0.1:{port}"
    basic = aiohttp.encode_basic_auth(service["client_id"], service["client_secret"])
    lua = LUA_STATIC_POST.format(auth=basic, body="grant_type=client_credentials&scope=openid")
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        figures: dict[str, float] = {}
        for workers in args.workers:
            hub = start_hub(env, port, workers, scratch / f"hub-{number}-{workers}.log")
            try:
                wrk = Wrk(base, scratch, args.seconds, args.concurrency)
                wrk.run("/token", lua, seconds=2)  # warm-up: connections, caches, the database's plans
                before = cpu_seconds(hub.pid, workers)
                figures[str(workers)] = rate = wrk.run("/token", lua)
                after = cpu_seconds(hub.pid, workers)
            finally:
                stop_hub(hub)
            split = sorted((after[p] - before.get(p, 0.0) for p in after), reverse=True)
            share = " + ".join(f"{s:.1f}" for s in split)
            print(f"round {number + 1}: --workers {workers}: {rate:8.1f} client_credentials grants/s (CPU s per process: {share})", file=sys.stderr)
        rounds.append(figures)
    summary: dict = {"rounds": rounds}
    for workers in args.workers:
        summary[f"median_workers_{workers}"] = statistics.median(r[str(workers)] for r in rounds)
    first = args.workers[0]
    for workers in args.workers[1:]:
        summary[f"ratio_{workers}_vs_{first}"] = [r[str(workers)] / r[str(first)] for r in rounds]
    return summary


def argon2_rate(seconds: float, threads: int, memory_cost: int, time_cost: int) -> float:
    from identity.accounts.passwords import PasswordHasher

    hasher = PasswordHasher(memory_cost=memory_cost, time_cost=time_cost)
    encoded = hasher.hash(PASSWORD)
    deadline = time.perf_counter() + seconds

    def work() -> int:
        n = 0
        while time.perf_counter() < deadline:
            hasher.verify(encoded, PASSWORD)
            n += 1
        return n

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: work(), range(threads)))
    return total / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="'sqlite' (embedded) or a Postgres URL to a database the bench may use")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement (default 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], metavar="N",
        help="hub processes (serve --workers N; default 1). Several counts (Postgres only): client_credentials only, for each in turn",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with several --workers counts: rounds of alternation (default 3)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench_hub needs wrk (Debian: apt-get install wrk)")
    if args.database == "sqlite" and max(args.workers) > 1:
        sys.exit("--workers above 1 needs Postgres (--database postgresql+asyncpg://...)")

    data_dir = Path(tempfile.mkdtemp(prefix="onesignin-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "ONESIGNIN_DATA_DIR": str(data_dir),
        "ONESIGNIN_ISSUER": base,
        "ONESIGNIN_SECRET_KEY": secrets.token_urlsafe(48),
        "ONESIGNIN_THROTTLE_ADDRESS_FAILURES": "1000000",
    }
    scratch_db = None
    if args.database != "sqlite":
        scratch_db = f"osi_bench_{uuid.uuid4().hex[:8]}"
        admin_url = args.database.replace("+asyncpg", "")
        subprocess.run(["psql", admin_url, "-qc", f'CREATE DATABASE "{scratch_db}"'], check=True)
        env["ONESIGNIN_DATABASE_URL"] = args.database.rsplit("/", 1)[0] + "/" + scratch_db
        cli(env, "migrate")
    service = cli(env, "services", "add", "--name", "Bench", "--redirect-uri", REDIRECT)
    scripts = Path(tempfile.mkdtemp(prefix="onesignin-wrk-"))
    if len(args.workers) > 1:
        try:
            summary = compare_workers(env, port, service, args, scripts)
        finally:
            shutil.rmtree(scripts, ignore_errors=True)
            if scratch_db:
                subprocess.run(["psql", args.database.replace("+asyncpg", ""), "-qc", f'DROP DATABASE "{scratch_db}" WITH (FORCE)'], check=False)
            shutil.rmtree(data_dir, ignore_errors=True)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"client_credentials grants/s on Postgres; {os.cpu_count()} cores; {args.seconds:.0f} s per figure; {args.concurrency} connections")
            for number, figures in enumerate(summary["rounds"], 1):
                print(f"  round {number}: " + ", ".join(f"--workers {w}: {v:.1f}" for w, v in figures.items()))
            for key, value in summary.items():
                if key != "rounds":
                    print(f"  {key}: {', '.join(f'{v:.2f}' for v in value) if isinstance(value, list) else f'{value:.1f}'}")
        return

    users = 64
    for i in range(users):
        cli(env, "users", "add", "--email", f"p{i}@example.com", "--password", PASSWORD, "--given-name", "P", "--verified")
    hub = start_hub(env, port, args.workers[0], scripts / "hub.log")
    results: dict[str, float] = {}
    try:
        basic = aiohttp.encode_basic_auth(service["client_id"], service["client_secret"])
        wrk = Wrk(base, scripts, args.seconds, args.concurrency)

        results["client_credentials_grants_per_s"] = wrk.run(
            "/token", LUA_STATIC_POST.format(auth=basic, body="grant_type=client_credentials&scope=openid")
        )

        # Seeded a few flows at a time: the hub answers 503 beyond its queue of password hashes.
        seeding = asyncio.Semaphore(8)

        async def seeded(email: str) -> str:
            async with seeding:
                return await sign_in_and_authorize(base, service["client_id"], service["client_secret"], email)

        refresh_tokens = await asyncio.gather(*(seeded(f"p{i % users}@example.com") for i in range(args.concurrency * 2)))
        results["refresh_grants_per_s"] = wrk.run(
            "/token", LUA_REFRESH.format(auth=basic, tokens=", ".join(f'"{t}"' for t in refresh_tokens))
        )

        access_tokens = []
        async with aiohttp.ClientSession() as http:
            for i in range(args.concurrency):
                email = f"p{i % users}@example.com"
                refresh = await sign_in_and_authorize(base, service["client_id"], service["client_secret"], email)
                async with http.post(
                    f"{base}/token",
                    data={"grant_type": "refresh_token", "refresh_token": refresh},
                    headers={"Authorization": basic},
                ) as r:
                    access_tokens.append((await r.json())["access_token"])
        results["userinfo_per_s"] = wrk.run("/userinfo", LUA_USERINFO.format(tokens=", ".join(f'"{t}"' for t in access_tokens)))
        results["introspections_per_s"] = wrk.run(
            "/introspect", LUA_INTROSPECT.format(auth=basic, tokens=", ".join(f'"{t}"' for t in access_tokens))
        )

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{base}/sign-in") as r:
                csrf_token = dict(_INPUT.findall(await r.text()))["csrf_token"]
                cookie = r.cookies["osi_csrf"].value
        # The machine's speed drifts, so the hash rate is measured right before and right after
        # the sign-ins (the hub idle meanwhile) and the two are averaged.
        hash_before = argon2_rate(args.seconds / 2, os.cpu_count() or 1, 19456, 2)
        # From a browser each person signed in with before (the usual case), then from browsers
        # new to the accounts (each sign-in also mails the person).
        devices = [await device_cookie(base, f"p{i}@example.com") for i in range(users)]
        results["password_sign_ins_per_s"] = wrk.run(
            "/sign-in",
            LUA_SIGN_IN.format(
                cookie=cookie, csrf=csrf_token, users=users, password=PASSWORD.replace(" ", "+"), devices=", ".join(f'"{d}"' for d in devices)
            ),
        )
        results["new_browser_sign_ins_per_s"] = wrk.run(
            "/sign-in",
            LUA_SIGN_IN.format(cookie=cookie, csrf=csrf_token, users=users, password=PASSWORD.replace(" ", "+"), devices=""),
        )
        hash_after = argon2_rate(args.seconds / 2, os.cpu_count() or 1, 19456, 2)
        results["argon2id_verifications_per_s"] = (hash_before + hash_after) / 2
    finally:
        stop_hub(hub)
        shutil.rmtree(scripts, ignore_errors=True)
    results["sign_in_vs_hash_rate"] = results["password_sign_ins_per_s"] / results["argon2id_verifications_per_s"]
    results["new_browser_sign_in_vs_hash_rate"] = results["new_browser_sign_ins_per_s"] / results["argon2id_verifications_per_s"]
    if scratch_db:
        subprocess.run(["psql", args.database.replace("+asyncpg", ""), "-qc", f'DROP DATABASE "{scratch_db}" WITH (FORCE)'], check=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"database: {'SQLite (embedded)' if args.database == 'sqlite' else 'Postgres'}; {os.cpu_count()} cores; "
            f"{args.seconds:.0f} s per figure; --workers {args.workers[0]}"
        )
        for key, value in results.items():
            print(f"  {key:32s} {value:10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
