"""Which SQL statements the suite reaches on which database (``pytest -p tests.statements``).

The tests named in ``tests/sqlite_alone.txt`` run on SQLite alone: each statement they reach on
Postgres, another test reaches on Postgres too. This plugin checks that claim for a whole run,
and plans that list from a run of every test on both databases. Each statement the hub's code executes in a test process is keyed by its SQL as
SQLAlchemy writes it without a dialect (so the same query is one key on SQLite and on Postgres),
and the run ends with a report of the keys reached on one database alone. A statement that
exists for one database only (``identity/db/dialect.py``'s branches, Postgres' locks) is
expected there; any other is a statement whose other half no test reaches. Statements issued by
processes a test starts (``serve``, ``worker``) are not seen; their statements are the in-process
hub's.

``ONESIGNIN_STATEMENTS_REPORT=PATH`` also writes, per test, the keys it reached and its duration
(JSON lines). ``python -m tests.statements PATH`` reads such a report of a run with
``ONESIGNIN_TEST_BOTH_DATABASES=1`` and prints the list for ``tests/sqlite_alone.txt``: the tests,
longest first, whose Postgres runs can go while every statement stays reached on Postgres.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

_current: str | None = None
_reached: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # test -> dialect -> keys
_SPACES = re.compile(r"\s+")
_REPEATS = re.compile(r"(\(?(?:%\(\w+\)s|__\[POSTCOMPILE_\w+\])(?:, )?)+\)?")
_NUMBERED = re.compile(r"(sa_savepoint_|anon_|param_|_)\d+")
_DML = re.compile(r"(\[\w+ alone\] )?(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)
_NOT_OURS = re.compile(r"alembic|sqlite_master|sqlite_temp_master|pg_catalog|information_schema|pg_class", re.IGNORECASE)
_POSTGRES = postgresql.dialect()
_keys: dict[int, tuple[Any, str | None]] = {}
_durations: dict[str, float] = defaultdict(float)


def _key(dialect: str, statement: str, compiled: Any) -> str | None:
    """The statement without its dialect: its Core construct compiled for Postgres whichever
    database ran it (as run where there is no construct), placeholder runs folded. None for what
    is not the hub's own work (schema reflection, migrations, the catalogs)."""
    found = _keys.get(id(compiled))
    if found is not None and found[0] is compiled:
        return found[1]
    text = statement
    if compiled is not None and getattr(compiled, "statement", None) is not None:
        try:
            text = str(compiled.statement.compile(dialect=_POSTGRES))
        except Exception:  # noqa: BLE001 (a construct only its own dialect compiles, whatever it raises)
            text = f"[{dialect} alone] {statement}"
    text = _SPACES.sub(" ", text).strip()
    key: str | None = _REPEATS.sub("?", _NUMBERED.sub(r"\1N", text))
    if not _DML.match(text) or _NOT_OURS.search(text):
        key = None
    if compiled is not None:
        _keys[id(compiled)] = (compiled, key)
    return key


@event.listens_for(Engine, "before_cursor_execute")
def _record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    if _current is None:
        return
    key = _key(conn.dialect.name, statement, getattr(context, "compiled", None))
    if key is not None:
        _reached[_current][conn.dialect.name].add(key)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _current
    _current = item.nodeid
    try:
        return (yield)
    finally:
        _current = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] += report.duration


def _as_json() -> dict[str, dict[str, list[str]]]:
    return {test: {d: sorted(keys) for d, keys in by.items()} for test, by in _reached.items()}


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker hands its findings to the controller
        workeroutput["statements"] = json.dumps(_as_json())


def pytest_testnodedown(node: Any, error: Any) -> None:
    found = json.loads(getattr(node, "workeroutput", {}).get("statements", "{}"))
    for test, by in found.items():
        for dialect, keys in by.items():
            _reached[test][dialect].update(keys)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if getattr(terminalreporter.config, "workeroutput", None) is not None:
        return
    per_dialect: dict[str, set[str]] = defaultdict(set)
    for by in _reached.values():
        for dialect, keys in by.items():
            per_dialect[dialect] |= keys
    dialects = sorted(per_dialect)
    write = terminalreporter.write_line
    write("")
    write(f"statements reached: {', '.join(f'{d} {len(per_dialect[d])}' for d in dialects)}")
    if len(dialects) == 2:
        a, b = dialects
        for only, other in ((a, b), (b, a)):
            alone = sorted(per_dialect[only] - per_dialect[other])
            write(f"reached on {only} alone: {len(alone)}")
            for key in alone:
                write(f"  {key[:300]}")
    report = os.environ.get("ONESIGNIN_STATEMENTS_REPORT")
    if report:
        with Path(report).open("w", encoding="utf-8") as out:
            for test, by in sorted(_as_json().items()):
                out.write(json.dumps({"test": test, "seconds": round(_durations.get(test, 0.0), 3), "reached": by}) + "\n")


_DATABASE = re.compile(r"^(sqlite|postgres)$")


def _function(nodeid: str) -> tuple[str, str | None]:
    """A test's function (its node id without parameters) and the database it ran on."""
    function, _, params = nodeid.partition("[")
    database = next((p for p in params.rstrip("]").split("-") if _DATABASE.match(p)), None)
    return function, database


def plan(report: Path) -> list[str]:
    """The test functions whose Postgres runs add no statement that the other Postgres runs do
    not reach, the longest first (greedily: each one dropped is no longer counted on)."""
    runs: dict[str, dict[str, list[tuple[float, set[str]]]]] = defaultdict(lambda: defaultdict(list))
    reached_by: dict[str, int] = defaultdict(int)  # Postgres statement -> runs reaching it
    for line in report.read_text(encoding="utf-8").splitlines():
        found = json.loads(line)
        function, database = _function(found["test"])
        if database is None:
            continue
        keys = set(found["reached"].get("postgresql", []))
        runs[function][database].append((found["seconds"], keys))
        for key in keys:
            reached_by[key] += 1
    candidates = [(f, by["postgres"]) for f, by in runs.items() if by.get("sqlite") and by.get("postgres")]
    candidates.sort(key=lambda c: -sum(seconds for seconds, _ in c[1]))
    alone = []
    for function, postgres_runs in candidates:
        keys = [key for _, reached in postgres_runs for key in reached]
        spent = defaultdict(int)
        for key in keys:
            spent[key] += 1
        if all(reached_by[key] > count for key, count in spent.items()):
            for key, count in spent.items():
                reached_by[key] -= count
            alone.append(function)
    return sorted(alone)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        print("usage: python -m tests.statements REPORT  (prints the list for tests/sqlite_alone.txt)")
        raise SystemExit(0 if len(sys.argv) == 2 else 2)
    print("# The test functions that run on SQLite alone (tests/conftest.py): every statement they reach on")
    print("# Postgres, other tests reach there too. Planned from a run of every test on both databases:")
    print("#   ONESIGNIN_TEST_BOTH_DATABASES=1 ONESIGNIN_STATEMENTS_REPORT=r.jsonl pytest -p tests.statements ...")
    print("#   python -m tests.statements r.jsonl > tests/sqlite_alone.txt")
    for name in plan(Path(sys.argv[1])):
        print(name)
