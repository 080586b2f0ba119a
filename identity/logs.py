"""The processes' logs: plain text (the default) or one JSON object a line
(``ONESIGNIN_LOG_FORMAT=json``), each line carrying the id of the request it was written for
(:data:`REQUEST_ID`, set by :func:`identity.web.middleware.request_context`). Nothing secret is
logged: the access log names the method, the path without its query string, the status, the
duration and the request id, never a token, a cookie or a query string. Everything goes to stderr,
a line at once, or in batches in a server once it serves (:class:`BufferedStreamHandler`,
:func:`batch`)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
import threading
import time
import weakref
from contextvars import ContextVar
from typing import Literal

import orjson

#: The id of the request being answered in this task, if any.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"
#: An access line's fields: method, path (no query string), status, duration in milliseconds.
AccessFields = tuple[str, str, int, float]
ACCESS_MESSAGE = "%s %s %s %.1f ms"


def _msecs(created: float) -> float:
    """The milliseconds of ``created`` as a record's ``msecs`` (Python 3.11's working)."""
    return int((created - int(created)) * 1000) + 0.0


class RequestIdFilter(logging.Filter):
    """Gives every record the current request's id (``request_id``, None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        record.request_id = rid
        record.request_suffix = f" [request {rid}]" if rid else ""
        return True


class TextFormatter(logging.Formatter):
    """``logging.Formatter``'s lines, with the date and time to the second worked out once a
    second rather than for every line (a busy hub writes an access line per request)."""

    def __init__(self, fmt: str = TEXT) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._asctime(record.created, record.msecs)

    def _asctime(self, created: float, msecs: float) -> str:
        second, text = self._second
        if second != int(created):
            second = int(created)
            text = time.strftime(self.default_time_format, self.converter(created))
            self._second = (second, text)
        return self.default_msec_format % (text, msecs)

    def access(self, created: float, name: str, fields: AccessFields, rid: str | None) -> str:
        """The line :meth:`format` makes of an access record (see :func:`access`) with the
        default format, made without one."""
        suffix = f" [request {rid}]" if rid else ""
        return f"{self._asctime(created, _msecs(created))} INFO {name}: {ACCESS_MESSAGE % fields}{suffix}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, access fields, error."""

    #: Attributes the access log adds to its records (``extra=``).
    FIELDS = ("method", "path", "status", "duration_ms")

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        """ISO 8601 in UTC to the millisecond, the part to the second worked out once a second."""
        fraction, seconds = math.modf(created)
        whole, micro = divmod(int(seconds) * 1_000_000 + round(fraction * 1_000_000), 1_000_000)  # as datetime rounds it
        second, text = self._second
        if second != whole:
            second, text = whole, dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        return f"{text}.{micro // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            line["request_id"] = record.request_id  # type: ignore[attr-defined]
        for name in self.FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return _json_line(line)

    def access(self, created: float, name: str, fields: AccessFields, rid: str | None) -> str:
        """The line :meth:`format` makes of an access record (see :func:`access`), made without one."""
        line: dict[str, object] = {"time": self._time(created), "level": "INFO", "logger": name, "message": ACCESS_MESSAGE % fields}
        if rid:
            line["request_id"] = rid
        line.update(zip(self.FIELDS, fields, strict=True))
        return _json_line(line)


def _json_line(line: dict[str, object]) -> str:
    # orjson, about a tenth of the standard library's time for such a line; a line it refuses
    # (a lone surrogate) or that is not ASCII goes through the standard library, which
    # escapes what is not ASCII, so a line reads the same whatever stderr's encoding.
    try:
        text: str | None = orjson.dumps(line, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        text = None
    return text if text is not None and text.isascii() else json.dumps(line, default=str)


#: Characters written at most at once: PIPE_BUF (4,096 bytes on Linux) at four bytes a character.
CHUNK = 1024


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines written to the stream at once, or in batches once :func:`batch` says so (a server,
    once it handles SIGTERM and SIGINT itself): then at most ``interval`` seconds after the first
    line waits, at once when ``limit`` characters wait, and at once, after everything before it,
    for a warning or worse (as nginx's ``access_log … buffer= flush=``). A busy hub writes an
    access line per request; a write per line cost more than making the line. What waits is
    written when the handler is flushed or closed (``logging.shutdown`` does both at exit);
    only a process killed by a signal it does not handle loses it."""

    def __init__(self, stream: object, interval: float = 0.0, limit: int = 64 * 1024) -> None:
        super().__init__(stream)  # type: ignore[arg-type]
        self.interval = interval
        self.limit = limit
        self._closed = False
        self._forget()
        _BATCHING.add(self)

    def _forget(self) -> None:
        """A forked child starts empty (its parent writes what waited) and without a flusher."""
        self._waiting: list[str] = []
        self._size = 0
        self._due = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (``Handler.handle``).
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging's own handlers: a line that cannot be made is reported, not raised
            self.handleError(record)
            return
        self._add(line, record.levelno)

    def _add(self, line: str, levelno: int) -> None:
        self._waiting.append(line)
        self._size += len(line)
        if self.interval <= 0 or self._closed or levelno >= logging.WARNING or self._size >= self.limit:
            self._write()
        elif len(self._waiting) == 1:
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, name="log-flusher", daemon=True)
                self._flusher.start()
            self._due.set()

    def _write(self) -> None:
        if not self._waiting:
            return
        waiting, self._waiting, self._size = self._waiting, [], 0
        # Whole lines, at most PIPE_BUF bytes a write (CHUNK characters of UTF-8): a pipe never
        # splits such a write, so the lines of several processes sharing a stderr (the workers
        # of ``serve --workers``) stay whole. (A longer line is written alone, as it always was.)
        chunk: list[str] = []
        size = 0
        for line in waiting:
            if chunk and size + len(line) > CHUNK:
                self._put("".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        self._put("".join(chunk))

    def _put(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the stream is closed or its reader went away: nothing to tell it

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _flush_forever(self) -> None:
        while True:
            self._due.wait()
            if self._stop.wait(self.interval):  # lines gather for the interval after the first
                return  # closed
            self._due.clear()
            self.flush()

    def close(self) -> None:
        # Not joined: logging.shutdown closes with the lock held that the flusher may wait for.
        self._closed = True
        self._stop.set()
        self._due.set()
        self.flush()
        super().close()


#: Every BufferedStreamHandler (weakly): :func:`batch` switches them, a forked child empties them.
_BATCHING: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_BATCHING):
        handler._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def batch(seconds: float) -> None:
    """From now on this process's log lines are written in batches, at most ``seconds`` after the
    first one waits (0: each at once). For a server, once it handles SIGTERM and SIGINT itself
    (and so ends through ``logging.shutdown``, which writes what waits)."""
    for handler in list(_BATCHING):
        with handler.lock:  # type: ignore[union-attr]
            handler.interval = seconds
            if seconds <= 0:
                handler._write()


def access(logger: logging.Logger, fields: AccessFields) -> None:
    """Log one access line (:data:`AccessFields`) at INFO on ``logger``, for the request being
    answered. Where the line goes only to this module's handlers and formatters, as
    :func:`configure` sets them up (no filter but the request id's, no format of the operator's),
    the line is made and handed to them directly: the same text as through a
    ``logging.LogRecord``, at a fraction of the cost (a busy hub writes one per request).
    Anywhere else (another handler, a filter, a test's capture) it goes through ``logging``."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handlers = _own_handlers(logger)
    if handlers is None:
        # The logging module's search of the stack for the caller's file and line (which an
        # access line does not show) is the dearest part of a log call: the record is built
        # directly, and without a path (it would work out a file and module name from it).
        logger.handle(logger.makeRecord(
            logger.name, logging.INFO, "", 0, ACCESS_MESSAGE, fields, None, extra=dict(zip(JsonFormatter.FIELDS, fields, strict=True))
        ))
        return
    created, rid = time.time(), REQUEST_ID.get()
    for handler, formatter in handlers:
        with handler.lock:  # type: ignore[union-attr]
            handler._add(formatter.access(created, logger.name, fields, rid) + handler.terminator, logging.INFO)


def _own_handlers(logger: logging.Logger) -> list[tuple[BufferedStreamHandler, TextFormatter | JsonFormatter]] | None:
    """The handlers a record of ``logger`` at INFO would reach, when every one is this module's,
    filtered only for the request id and formatting with this module's formatters; else None."""
    if logger.filters:
        return None
    found = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if type(handler) is not BufferedStreamHandler or len(handler.filters) != 1 or type(handler.filters[0]) is not RequestIdFilter:
                return None
            formatter = handler.formatter
            plain_text = type(formatter) is TextFormatter and formatter._fmt == TEXT and formatter.datefmt is None
            if not plain_text and type(formatter) is not JsonFormatter:
                return None
            if handler.level <= logging.INFO:
                found.append((handler, formatter))
        current = current.parent if current.propagate else None
    return found or None  # no handler at all: logging's last resort decides


def flush() -> None:
    """Write what waits in this process's log handlers (before a message printed to stderr)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure(log_format: LogFormat = "text", level: int = logging.INFO) -> None:
    """Send the process's logs to stderr in ``log_format`` (replacing any earlier set-up), each
    line at once until :func:`batch`."""
    handler = BufferedStreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, BufferedStreamHandler):
            old.close()  # what waits in it is written first
    root.addHandler(handler)
    root.setLevel(level)
    # No line shows a thread, a process or a multiprocessing name: each record (one access line
    # per request) is spared looking them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("alembic").setLevel(logging.WARNING)
