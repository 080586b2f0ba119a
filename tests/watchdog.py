"""A test that hangs fails and says what it was waiting for.

pytest-timeout is the last resort: past ``timeout`` seconds it prints every thread's stack and
ends the worker (pytest-xdist then names the test). An asyncio test's thread is only ever seen
waiting in the event loop's ``select``, and a worker's output is not shown, so this watchdog acts
first: it writes the stack of every unfinished asyncio task (where the wait really is) to the
test's captured standard error, then cancels those tasks, so the test fails the ordinary way,
with that report and a traceback through the awaiting line, and the run goes on. A hang that the
cancellation ends quietly (a fixture's teardown awaiting a background task under
``contextlib.suppress(CancelledError)``) fails the test too, with the same report."""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
import traceback
from collections.abc import Iterator

import pytest

EARLIER = 30.0  # seconds before pytest-timeout's own limit


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    return [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]


def _report(nodeid: str) -> str:
    out = io.StringIO()
    out.write(f"\n+++ watchdog: {nodeid} is still running; its unfinished asyncio tasks: +++\n")
    for obj in gc.get_objects():
        try:
            if isinstance(obj, asyncio.Task) and not obj.done():
                out.write(f"--- {obj!r}\n")
                obj.print_stack(file=out)
        except Exception as exc:  # noqa: BLE001 (a diagnostic must never raise)
            out.write(f"(could not show a task: {exc!r})\n")
    for thread_id, frame in sys._current_frames().items():
        if thread_id != threading.get_ident():
            out.write(f"--- thread {thread_id}\n{''.join(traceback.format_stack(frame))}")
    return out.getvalue()


def _cancel_everything() -> None:
    for task in asyncio.all_tasks():
        task.cancel("the test ran too long (tests/watchdog.py)")


#: The report of each test the watchdog fired for, until its last phase is reported.
_FIRED: dict[str, str] = {}


def _fire(nodeid: str) -> None:
    try:
        _FIRED[nodeid] = report = _report(nodeid)
        sys.stderr.write(report)
        sys.stderr.flush()
        for loop in _running_loops():
            loop.call_soon_threadsafe(_cancel_everything)
    except Exception:  # noqa: BLE001 (pytest-timeout still ends the test)
        traceback.print_exc()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    limit = float(item.config.getini("timeout") or 0)
    marker = item.get_closest_marker("timeout")
    if marker and marker.args:
        limit = float(marker.args[0])
    timer = None
    if limit > EARLIER:
        timer = threading.Timer(limit - EARLIER, _fire, (item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if call.when == "teardown" and item.nodeid in _FIRED:
        hung = _FIRED.pop(item.nodeid)
        if report.passed:
            report.outcome = "failed"
            report.longrepr = f"the test or its teardown hung until the watchdog cancelled it:{hung}"
