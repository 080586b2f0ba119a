"""The processes' logs: plain text (the default) or one JSON object a line
(``ONESIGNIN_LOG_FORMAT=json``), each line carrying the id of the request it was written for
(:data:`REQUEST_ID`, set by :func:`identity.web.middleware.request_context`). Nothing secret is
logged: the access log names the method, the path without its query string, the status, the
duration and the request id, never a token, a cookie or a query string."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from contextvars import ContextVar
from typing import Literal

#: The id of the request being answered in this task, if any.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"


class RequestIdFilter(logging.Filter):
    """Gives every record the current request's id (``request_id``, None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        record.request_id = rid
        record.request_suffix = f" [request {rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, access fields, error."""

    #: Attributes the access log adds to its records (``extra=``).
    FIELDS = ("method", "path", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
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
        return json.dumps(line, default=str)


def configure(log_format: LogFormat = "text", level: int = logging.INFO) -> None:
    """Send the process's logs to stderr in ``log_format`` (replacing any earlier set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # No line shows a thread, a process or a multiprocessing name: each record (one access line
    # per request) is spared looking them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("alembic").setLevel(logging.WARNING)
