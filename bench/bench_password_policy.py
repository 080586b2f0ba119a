"""The password policy's cost: loading the offline lists in a fresh process and checking one
password (accepted or refused as breached).

    .venv/bin/python bench/bench_password_policy.py
"""

from __future__ import annotations

import secrets
import statistics
import time


def main() -> None:
    started = time.perf_counter()
    from identity.accounts import breached, passwords

    imported = time.perf_counter()
    known = breached.breached_list()
    mapped = time.perf_counter()
    passwords.check_password("warm the word lists up please")
    first = time.perf_counter()
    print(f"import {1000 * (imported - started):.1f} ms; map the breached list ({len(known):,} entries) "
          f"{1000 * (mapped - imported):.2f} ms; first check, loading the word lists {1000 * (first - mapped):.1f} ms")

    strong = [secrets.token_urlsafe(12) for _ in range(50_000)]
    refused = ["Password123!", "Monkey123456", "letmein12345", "qwerty123456!"] * 12_500
    for name, sample in (("a strong password", strong), ("a breached password", refused)):
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for password in sample:
                passwords.check_password(password)
            runs.append((time.perf_counter() - t) / len(sample))
        print(f"check_password, {name}: {1e6 * statistics.median(runs):.1f} µs (median of 5 runs of {len(sample):,})")
    t = time.perf_counter()
    for password in strong:
        password in known  # noqa: B015
    print(f"one breached-list lookup: {1e6 * (time.perf_counter() - t) / len(strong):.1f} µs")


if __name__ == "__main__":
    main()
