"""How log lines reach stderr: the servers write them in batches (a warning or worse at once,
after everything before it), their time is the standard library's to the millisecond, and the
random ids made per request come from a pool a forked child does not share. An access line
made without a record reads as the one a record makes, and goes through ``logging`` wherever
anything but the hub's own handlers would see it."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from identity import logs
from identity.logs import ACCESS_MESSAGE, REQUEST_ID, TEXT, BufferedStreamHandler, JsonFormatter, RequestIdFilter, TextFormatter, batch, configure
from identity.tokens import new_id


class Stream(io.StringIO):
    """A stream that counts its writes and says when one came."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.wrote = threading.Event()

    def write(self, text: str) -> int:
        self.writes += 1
        written = super().write(text)
        self.wrote.set()
        return written


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.lines.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return logger


def test_lines_wait_for_the_interval_and_are_written_together() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream, interval=3600)
    logger = _logger(handler)
    try:
        for n in range(3):
            logger.info("line %d", n)
        assert stream.getvalue() == ""  # within the interval, nothing is written yet
        handler.flush()
        assert stream.getvalue() == "INFO line 0\nINFO line 1\nINFO line 2\n"
        assert stream.writes == 1
    finally:
        handler.close()


def test_a_warning_is_written_at_once_after_what_waited() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream, interval=3600)
    logger = _logger(handler)
    try:
        logger.info("before")
        logger.warning("trouble")
        assert stream.getvalue() == "INFO before\nWARNING trouble\n"
        logger.info("after")
        assert stream.getvalue() == "INFO before\nWARNING trouble\n"
    finally:
        handler.close()
    assert stream.getvalue().endswith("INFO after\n")  # closing writes what waits


def test_a_full_buffer_is_written_at_once() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream, interval=3600, limit=100)
    logger = _logger(handler)
    try:
        logger.info("x" * 40)
        logger.info("y" * 40)
        assert stream.getvalue() == ""
        logger.info("z" * 40)  # past 100 bytes
        assert stream.getvalue().count("\n") == 3
    finally:
        handler.close()


def test_each_write_is_whole_lines_a_pipe_keeps_together() -> None:
    """Several processes may share one stderr pipe: a write of at most PIPE_BUF bytes is never
    split there, so the lines of one never cut through the lines of another."""
    stream = Stream()
    writes: list[str] = []
    stream.write = lambda text: writes.append(text) or len(text)  # type: ignore[method-assign]
    handler = BufferedStreamHandler(stream, interval=3600)
    logger = _logger(handler)
    try:
        for n in range(300):
            logger.info("%03d %s", n, "\N{GRINNING FACE}" * 90)  # about 100 characters a line, most of four bytes
        handler.flush()
    finally:
        handler.close()
    assert 10 < len(writes) < 300
    assert all(len(w.encode()) <= 4096 and w.endswith("\n") for w in writes)
    assert "".join(writes).splitlines() == [f"INFO {n:03d} {chr(0x1F600) * 90}" for n in range(300)]


def test_lines_are_written_once_the_interval_has_passed() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream, interval=0.05)
    logger = _logger(handler)
    try:
        logger.info("soon")
        assert stream.wrote.wait(timeout=30), "the line was not written"
        assert stream.getvalue() == "INFO soon\n"
        stream.wrote.clear()
        logger.info("again")  # a later line starts another interval
        assert stream.wrote.wait(timeout=30), "the second line was not written"
        assert stream.getvalue() == "INFO soon\nINFO again\n"
    finally:
        handler.close()


def test_each_line_is_written_at_once_until_batching_starts_and_after_it_ends() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream)  # as configure makes it
    logger = _logger(handler)
    try:
        logger.info("at once")
        assert stream.getvalue() == "INFO at once\n"
        batch(3600)  # a server, once it handles SIGTERM itself
        logger.info("waits")
        assert stream.getvalue() == "INFO at once\n"
        batch(0)  # its clean-up: what waits is written
        assert stream.getvalue() == "INFO at once\nINFO waits\n"
        logger.info("at once again")
        assert stream.getvalue().endswith("INFO at once again\n")
    finally:
        batch(0)
        handler.close()


def test_closing_ends_the_flusher_and_a_late_line_is_written_at_once() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream, interval=3600)
    logger = _logger(handler)
    logger.info("waits")
    flusher = handler._flusher
    assert flusher is not None and flusher.is_alive()
    handler.close()
    flusher.join(timeout=30)
    assert not flusher.is_alive(), "the flusher sleeps on after its handler closed"
    assert stream.getvalue() == "INFO waits\n"
    logger.info("late")  # a thread that was already logging to it
    assert stream.getvalue() == "INFO waits\nINFO late\n"


def test_configure_again_writes_what_the_handler_it_replaces_held(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    kept, level = list(root.handlers), root.level
    try:
        configure("text")
        batch(3600)
        logging.getLogger("test.lines").info("held")
        assert "held" not in capsys.readouterr().err
        configure("text")
        assert "held" in capsys.readouterr().err
    finally:
        batch(0)
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in kept:
            root.addHandler(handler)
        root.setLevel(level)


def test_lines_waiting_at_exit_are_written() -> None:
    program = (
        "import logging; from identity import logs; logs.configure('text'); logs.batch(3600); "
        "logging.getLogger('x').info('written at exit')"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True)
    assert "written at exit" in done.stderr


def test_a_forked_child_leaves_what_waits_to_its_parent() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream, interval=3600)
    logger = _logger(handler)
    try:
        logger.info("the parent's")
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            os.close(read)
            handler.flush()
            os.write(write, (stream.getvalue() or "-").encode())
            os._exit(0)
        os.close(write)
        try:
            childs = os.read(read, 4096).decode()
        finally:
            os.close(read)
            os.waitpid(child, 0)
        assert childs == "-", "the child wrote its parent's waiting lines"
        handler.flush()
        assert stream.getvalue() == "INFO the parent's\n"
    finally:
        handler.close()


def test_a_stream_gone_loses_the_lines_without_an_error() -> None:
    stream = Stream()
    handler = BufferedStreamHandler(stream, interval=3600)
    logger = _logger(handler)
    logger.info("lost")
    stream.close()
    handler.close()  # no ValueError from writing to a closed stream


#: Times with fractions that round across a millisecond (and a second) when made microseconds.
TIMES = [0.0, 1.5, 1_765_000_000.0004995, 1_765_000_000.9995, 1_765_000_000.9999996, 1_765_000_059.123456, 1_800_000_000.000999]


@pytest.mark.parametrize("created", TIMES)
def test_the_time_of_a_line_is_the_standard_librarys(created: float) -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", None, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    text, standard = TextFormatter(), logging.Formatter(TEXT)
    assert text.formatTime(record) == standard.formatTime(record)
    assert JsonFormatter()._time(created) == dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")


@pytest.mark.parametrize("message", ["POST /token 200 1.2 ms", "Zoë signed in", "a lone \udcff surrogate", 'quote " and \\ and \n'])
def test_a_json_line_is_ascii_json_of_the_record(message: str) -> None:
    record = logging.LogRecord("onesignin.access", logging.INFO, "", 0, "%s", (message,), None)
    record.request_id, record.status, record.duration_ms = "req-1", 200, 1.2  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    assert line.isascii()  # as the standard library's json.dumps writes it
    assert json.loads(line) == {
        "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
        "level": "INFO", "logger": "onesignin.access", "message": message, "request_id": "req-1", "status": 200, "duration_ms": 1.2,
    }


def test_times_within_one_second_are_told_apart() -> None:
    formatter = JsonFormatter()
    assert formatter._time(1_765_000_000.25) == "2025-12-06T05:46:40.250+00:00"
    assert formatter._time(1_765_000_000.75) == "2025-12-06T05:46:40.750+00:00"
    assert formatter._time(1_765_000_001.0) == "2025-12-06T05:46:41.000+00:00"


def _access_record(created: float, fields: logs.AccessFields, rid: str | None) -> logging.LogRecord:
    """The record the logging path makes of an access line (see ``logs.access``), at ``created``."""
    method, path, status, duration = fields
    logger = logging.getLogger("onesignin.access")
    record = logger.makeRecord(
        logger.name, logging.INFO, "", 0, ACCESS_MESSAGE, fields, None,
        extra={"method": method, "path": path, "status": status, "duration_ms": duration},
    )
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    token = REQUEST_ID.set(rid)
    try:
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    return record


ACCESS = [("POST", "/token", 200, 1.2), ("GET", "/i/abc/login", 303, 0.05), ("DELETE", "/api/v1/me/sessions/Zoë", 404, 12345.678)]


@pytest.mark.parametrize("created", TIMES[2:])
@pytest.mark.parametrize("fields", ACCESS)
@pytest.mark.parametrize("rid", ["0123456789abcdef", None])
def test_an_access_line_made_directly_is_the_records_line(created: float, fields: logs.AccessFields, rid: str | None) -> None:
    record = _access_record(created, fields, rid)
    for formatter in (TextFormatter(), JsonFormatter()):
        assert formatter.access(created, "onesignin.access", fields, rid) == formatter.format(record)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_lines_reach_the_hubs_handlers_directly_and_anything_else_through_logging(log_format: str) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access_log = logging.getLogger("onesignin.access")
    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    try:
        configure(log_format)  # type: ignore[arg-type]
        stream = io.StringIO()
        own = root.handlers[0]
        assert isinstance(own, BufferedStreamHandler)
        own.setStream(stream)
        token = REQUEST_ID.set("feedfacefeedface")
        try:
            logs.access(access_log, ("POST", "/token", 200, 1.25))
            assert not seen
            direct = stream.getvalue()
            capture = Capture()
            root.addHandler(capture)  # a handler not the hub's: every line goes through logging
            logs.access(access_log, ("POST", "/token", 200, 1.25))
            root.removeHandler(capture)
            through_logging = stream.getvalue()[len(direct):]
        finally:
            REQUEST_ID.reset(token)
        assert [(r.getMessage(), r.method, r.path, r.status, r.duration_ms) for r in seen] == [("POST /token 200 1.2 ms", "POST", "/token", 200, 1.25)]  # type: ignore[attr-defined]
        # Both ways, the same line but for its time.
        if log_format == "text":
            assert direct.endswith(" INFO onesignin.access: POST /token 200 1.2 ms [request feedfacefeedface]\n")
            assert direct.split(" ", 2)[2] == through_logging.split(" ", 2)[2]
        else:
            first, second = json.loads(direct), json.loads(through_logging)
            assert first.pop("time") and second.pop("time")
            assert first == second == {
                "level": "INFO", "logger": "onesignin.access", "message": "POST /token 200 1.2 ms",
                "request_id": "feedfacefeedface", "method": "POST", "path": "/token", "status": 200, "duration_ms": 1.25,
            }
        # A format or a date format of the operator's own, or a filter on the logger: through
        # logging too.
        own.setFormatter(TextFormatter("%(levelname)s %(message)s"))
        logs.access(access_log, ("GET", "/healthz", 200, 0.1))
        assert stream.getvalue().endswith("\nINFO GET /healthz 200 0.1 ms\n")
        dated = TextFormatter()
        dated.datefmt = "%Y"
        own.setFormatter(dated)
        logs.access(access_log, ("GET", "/dated", 200, 0.1))
        assert stream.getvalue().splitlines()[-1].split(" ")[:3] == [time.strftime("%Y"), "INFO", "onesignin.access:"]
        access_log.addFilter(lambda record: record.status != 204)  # type: ignore[attr-defined]
        logs.access(access_log, ("GET", "/nothing", 204, 0.1))
        assert "/nothing" not in stream.getvalue()
    finally:
        access_log.filters.clear()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            if handler not in saved[0]:
                handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def test_ids_from_the_pool_differ_and_a_forked_child_makes_its_own() -> None:
    made = {new_id(12) for _ in range(10_000)}
    assert len(made) == 10_000 and all(len(i) == 16 for i in made)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, new_id(12).encode())
        os._exit(0)
    os.close(write)
    try:
        childs = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(child, 0)
    # Without a pool of its own the child would hand out the very bytes the parent hands out next.
    assert len(childs) == 16 and new_id(12) != childs
