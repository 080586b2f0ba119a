#!/usr/bin/env python3
"""The hub's side of a profile change, measured alone: CPU per committed change.

Each change is a member service's correction of a given name, made as ``PATCH /api/v1/me`` makes
it (``identity.accounts.store.change_at_once``): the account's row written if its version is
still the one read, its history row and its outbox event, in one statement that commits on its
own on Postgres, in a transaction on SQLite. No relay or worker
runs: this is what every change costs the hub before sync sees it, the part ``bench_sync.py``
calls its writer.

The people are seeded linked to --services services, as in ``bench_sync.py``, and kept between
transactions (this process is their only writer). Each round commits --changes changes,
--concurrency at a time, round-robin over the people, and reports this process's CPU and the
database's (its Postgres backends, from /proc) per change, and changes per second. The first
round warms the caches; compare the rounds after it, and only with runs made in the same
minutes (this machine's speed drifts).

    python bench/bench_change.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/test
    python bench/bench_change.py --database sqlite --changes 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sync  # noqa: E402  (the seeding, scratch databases and CPU readings are shared)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    postgres = args.database != "sqlite"
    data_dir = tempfile.mkdtemp(prefix="onesignin-bench-change-")
    scratch = None
    if postgres:
        scratch, url = await bench_sync.create_scratch_database(args.database)
    else:
        url = f"sqlite+aiosqlite:///{Path(data_dir) / 'onesignin.db'}"
    secret_key = secrets.token_urlsafe(48)
    os.environ.update({"ONESIGNIN_DATA_DIR": data_dir, "ONESIGNIN_DATABASE_URL": url, "ONESIGNIN_SECRET_KEY": secret_key})
    from identity.db.engine import create_engine, create_sessionmaker
    from identity.db.migrate import upgrade
    from identity.sealing import KeyCipher
    from identity.settings import load_settings

    engine = create_engine(load_settings())
    rounds: list[dict[str, Any]] = []
    try:
        await upgrade(engine)
        sessions = create_sessionmaker(engine)
        bench_sync.say(f"seeding {args.people} people linked to {args.services} services ...")
        _, accounts = await bench_sync.seed(sessions, KeyCipher(secret_key), args.services, args.people, receiver_port=9)
        writer = bench_sync.Writer(sessions, accounts)
        for number in range(args.rounds):
            rounds.append(await _round(writer, len(accounts), args.changes, args.concurrency, scratch))
            if not args.json:
                r = rounds[-1]
                print(
                    f"round {number + 1}: {r['cpu_ms_per_change']:.3f} ms CPU per change here, "
                    + (f"{r['db_cpu_ms_per_change']:.3f} ms in Postgres, " if postgres else "")
                    + f"{r['changes_per_s']:.0f} changes/s",
                    flush=True,
                )
    finally:
        await engine.dispose()
        if scratch is not None:
            await bench_sync.drop_scratch_database(args.database, scratch)
    return {
        "database": "postgres" if postgres else "sqlite",
        "people": args.people,
        "services": args.services,
        "changes_per_round": args.changes,
        "concurrency": args.concurrency,
        "rounds": rounds,
    }


async def _round(writer: bench_sync.Writer, people: int, changes: int, concurrency: int, scratch: str | None) -> dict[str, float | None]:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            await writer.change(index % people)

    db_before = _backends_cpu(scratch)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(changes)))
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    db_after = _backends_cpu(scratch)
    # A backend the pool opened during the round counts from zero.
    db = sum(after - db_before.get(pid, 0.0) for pid, after in db_after.items())
    return {
        "cpu_ms_per_change": cpu / changes * 1000,
        "db_cpu_ms_per_change": db / changes * 1000 if scratch else None,
        "changes_per_s": changes / wall,
    }


def _backends_cpu(scratch: str | None) -> dict[int, float]:
    """CPU seconds so far of each Postgres backend serving ``scratch`` (none on SQLite)."""
    if scratch is None:
        return {}
    return {pid: cpu for pid in bench_sync._postgres_pids(scratch) if (cpu := bench_sync._cpu_of(pid)) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="sqlite", help="'sqlite' (a fresh file in a temp dir) or a Postgres URL: a scratch database is created beside it and dropped afterwards")
    parser.add_argument("--services", type=int, default=5, help="member services each person is linked to (default 5)")
    parser.add_argument("--people", type=int, default=2000, help="people changed, round-robin (default 2000)")
    parser.add_argument("--changes", type=int, default=3000, help="changes per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the first warms up (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="changes being committed at once (default 8)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()
    if args.people < args.concurrency * 2:
        parser.error("--people must be at least twice --concurrency")
    if args.changes < 1 or args.rounds < 1:
        parser.error("--changes and --rounds must be at least 1")
    with asyncio.Runner(loop_factory=bench_sync._new_loop) as runner:
        result = runner.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
