#!/usr/bin/env python3
"""Latency of the support console's search (identity.support.search.find) on a real Postgres.

Seed the database first with bench/seed_accounts.py. Queries are built from people sampled at
random from the table, in the mixes an agent types: a ``sub`` pasted whole; an email address
whole (as stored or in other case), its local part and "@", the start of its domain, or a
complete address nobody has; a whole phone number (only a whole one matches) in E.164, spaced, with ``00``, or dashed;
a family name whole (Smith matches 2 % of everyone) or its first 1–4 letters, a given name,
"given family", "given fam", "family, given". --searches queries of each of the five kinds
run one after another, shuffled together, each in its own session and transaction (as the
console runs a request), after --warmup unmeasured ones; a search's time is from opening the
session to its rows, on one connection. Percentiles are per kind the search reported
(``email`` or, when falling back, ``email_prefix``) and overall, in milliseconds.

    python bench/bench_search.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/osi_bench_search
    python bench/bench_search.py --database ... --json --explain
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from identity.support.search import find

TARGET_P95_MS = 100.0
KINDS = ("sub", "email", "phone", "name", "email_prefix")

Person = dict[str, Any]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))]


def spaced(number: str) -> str:
    """+447700900123 as an agent might read it out: +44 7700 900123."""
    code = 2 if number.startswith("+1") else 3 if number[1:3] in ("44", "49", "33", "61", "91", "34", "39") else 4
    head, rest = number[:code], number[code:]
    return f"{head} {rest[:4]} {rest[4:]}"


def mixes(rng: random.Random, people: list[Person], count: int) -> list[tuple[str, str]]:
    """(scenario, query) pairs: ``count`` for each intended kind."""
    queries: list[tuple[str, str]] = []
    pick = rng.choice
    phones = [p for p in people if p["phone_number"]]
    for _ in range(count):
        p = pick(people)
        queries.append(("sub upper-case", p["sub"].upper()) if rng.random() < 0.1 else ("sub", p["sub"]))

        p = pick(people)
        if rng.random() < 0.8:
            queries.append(("email exact", p["email"]))
        else:
            queries.append(("email exact, other case", f" {p['email'].title()} "))

        p = pick(people)
        local, _, domain = p["email"].partition("@")
        r = rng.random()
        if r < 0.35:
            queries.append(("email local@", f"{local}@"))
        elif r < 0.80:
            queries.append(("email local@dom", f"{local}@{domain[: rng.randint(1, 4)]}"))
        else:
            queries.append(("email unknown address", f"{local}@{domain[:-1]}x{domain[-1]}"))

        p = pick(phones)
        number = p["phone_number"]
        r = rng.random()
        if r < 0.4:
            queries.append(("phone E.164", number))
        elif r < 0.7:
            queries.append(("phone spaced", spaced(number)))
        elif r < 0.8:
            queries.append(("phone 00", "00" + number[1:]))
        else:
            queries.append(("phone dashed", f"{number[:3]}-{number[3:7]}-{number[7:]}"))

        p = pick(people)
        given, family = p["given_name"], p["family_name"]
        r = rng.random()
        if r < 0.25:
            queries.append(("name family", family))
        elif r < 0.40:
            queries.append(("name family 2-4 letters", family[: rng.randint(2, 4)]))
        elif r < 0.45:
            queries.append(("name 1 letter", family[:1]))
        elif r < 0.55:
            queries.append(("name given", given))
        elif r < 0.75:
            queries.append(("name given family", f"{given} {family}"))
        elif r < 0.87:
            queries.append(("name given fam", f"{given} {family[: rng.randint(2, 4)]}"))
        else:
            queries.append(("name family, given", f"{family}, {given}"))
    rng.shuffle(queries)
    return queries


async def sample(sessions: async_sessionmaker[AsyncSession], rng: random.Random, count: int) -> list[Person]:
    async with sessions() as db:
        low, high = (await db.execute(text("SELECT min(id), max(id) FROM accounts"))).one()
        ids = [rng.randint(low, high) for _ in range(count)]
        rows = await db.execute(
            text("SELECT sub, email, given_name, family_name, phone_number FROM accounts WHERE id = ANY(:ids)"),
            {"ids": ids},
        )
        return [dict(row._mapping) for row in rows]


async def timed(sessions: async_sessionmaker[AsyncSession], query: str, limit: int) -> tuple[str, float, int]:
    started = time.perf_counter()
    async with sessions.begin() as db:
        result = await find(db, query, limit=limit)
    return result.kind, (time.perf_counter() - started) * 1000, len(result.rows)


async def explain(sessions: async_sessionmaker[AsyncSession], queries: list[tuple[str, str]], limit: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE of every statement one query of each scenario sends: the scans it uses."""
    engine = sessions.kw["bind"]
    plans: dict[str, Any] = {}
    for scenario, query in sorted(dict(queries).items()):
        sent: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                sent.append((statement, parameters))  # noqa: B023 (removed before the next scenario)

        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        await timed(sessions, query, limit)
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
        steps = []
        async with engine.connect() as connection:
            for statement, parameters in sent:
                lines = [row[0] for row in await connection.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)]
                nodes = [line.strip().lstrip("-> ").split("  (")[0] for line in lines if "Scan" in line or "Sort" in line]
                total = next((line for line in lines if line.startswith("Execution Time")), "")
                steps.append({"nodes": nodes, "execution": total.removeprefix("Execution Time: ")})
        plans[scenario] = {"query": query, "statements": steps}
    return plans


async def machine(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    async with sessions() as db:
        accounts = await db.scalar(text("SELECT count(*) FROM accounts"))
        size = await db.scalar(text("SELECT pg_size_pretty(pg_total_relation_size('accounts'))"))
        version = await db.scalar(text("SHOW server_version"))
        buffers = await db.scalar(text("SHOW shared_buffers"))
    return {
        "accounts": accounts,
        "accounts_size_with_indexes": size,
        "postgres": version,
        "shared_buffers": buffers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def summarise(results: list[tuple[str, str, float, int]]) -> dict[str, Any]:
    def stats(times: list[float], rows: list[int]) -> dict[str, Any]:
        return {
            "searches": len(times),
            "p50_ms": round(percentile(times, 50), 2),
            "p95_ms": round(percentile(times, 95), 2),
            "p99_ms": round(percentile(times, 99), 2),
            "max_ms": round(max(times), 2),
            "mean_rows": round(sum(rows) / len(rows), 1),
        }

    by_kind: dict[str, list[tuple[float, int]]] = defaultdict(list)
    by_scenario: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for scenario, kind, ms, rows in results:
        by_kind[kind].append((ms, rows))
        by_scenario[scenario].append((ms, rows))
    kinds = {k: stats([t for t, _ in v], [r for _, r in v]) for k, v in sorted(by_kind.items(), key=lambda kv: KINDS.index(kv[0]) if kv[0] in KINDS else 99)}
    scenarios = {k: stats([t for t, _ in v], [r for _, r in v]) for k, v in sorted(by_scenario.items())}
    overall = stats([ms for _, _, ms, _ in results], [rows for *_, rows in results])
    return {"kinds": kinds, "overall": overall, "scenarios": scenarios}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = "postgresql+asyncpg://" + args.database.split("://", 1)[1]
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    rng = random.Random(args.seed)
    try:
        people = await sample(sessions, rng, args.searches * 3)
        queries = mixes(rng, people, args.searches)
        for _, query in mixes(random.Random(args.seed + 1), people, max(1, args.warmup // 5))[: args.warmup]:
            await timed(sessions, query, args.limit)
        results = []
        started = time.monotonic()
        for scenario, query in queries:
            kind, ms, rows = await timed(sessions, query, args.limit)
            results.append((scenario, kind, ms, rows))
        report: dict[str, Any] = {"machine": await machine(sessions), "limit": args.limit, "seconds": round(time.monotonic() - started, 1)}
        report |= summarise(results)
        report["target_p95_ms"] = TARGET_P95_MS
        report["target_met"] = all(k["p95_ms"] < TARGET_P95_MS for k in report["kinds"].values())
        if args.explain:
            report["plans"] = await explain(sessions, queries, args.limit)
        return report
    finally:
        await engine.dispose()


def print_text(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"{m['accounts']:,} accounts ({m['accounts_size_with_indexes']}), Postgres {m['postgres']}, {m['cpus']} CPUs, limit {report['limit']}")
    print(f"{'kind':<28}{'searches':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'rows':>7}")
    for title, group in (("", report["kinds"]), ("", {"overall": report["overall"]}), ("by scenario", report["scenarios"])):
        if title:
            print(title)
        for name, s in group.items():
            print(f"{name:<28}{s['searches']:>9}{s['p50_ms']:>9}{s['p95_ms']:>9}{s['p99_ms']:>9}{s['max_ms']:>9}{s['mean_rows']:>7}")
    print(f"target p95 < {report['target_p95_ms']:.0f} ms per kind: {'met' if report['target_met'] else 'NOT met'}")
    for scenario, plan in report.get("plans", {}).items():
        print(f"\n{scenario}: {plan['query']!r}")
        for step in plan["statements"]:
            print(f"  {step['execution']:>10}  " + " / ".join(step["nodes"]))


def main() -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], epilog="\n".join(doc.splitlines()[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True, help="Postgres URL of a database seeded by bench/seed_accounts.py")
    parser.add_argument("--searches", type=int, default=1000, help="searches of each of the five kinds (default 1000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured searches first (default 200)")
    parser.add_argument("--limit", type=int, default=25, help="rows per search (default 25)")
    parser.add_argument("--seed", type=int, default=1, help="seed for sampling people and queries (default 1)")
    parser.add_argument("--explain", action="store_true", help="also EXPLAIN ANALYZE one query of each scenario")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_text(report)


if __name__ == "__main__":
    main()
