"""What ``serve``, ``relay`` and ``worker`` check before they start anything, so that a busy
port, a database that does not answer or one that was never migrated is told in one line with
the command or setting that fixes it, instead of a traceback from deep inside the start-up."""

from __future__ import annotations

import asyncio
import errno
import socket

from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from identity.db.engine import create_engine
from identity.db.migrate import current_revision, head_revision
from identity.settings import Settings

#: How long the database may take to answer before ``serve`` gives up on it.
DATABASE_TIMEOUT = 10.0


class NotStartable(Exception):
    """Why the process cannot start, and what fixes it, in a line or two."""


def check_port(host: str, port: int, what: str = "--port") -> None:
    """Refuse a port another process listens on (the listener is then opened for real)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NotStartable(f"port {port} on {host} is already in use by another process: stop it, or choose another {what}") from None
            raise NotStartable(f"cannot listen on {host}:{port}: {exc.strerror or exc} (check {what} and --host)") from None


def described(settings: Settings) -> str:
    """The database URL without its password, for a message."""
    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


async def check_database(settings: Settings) -> None:
    """The database answers, and (unless the process migrates it itself, as on SQLite) is at
    the revision this version needs."""
    engine = create_engine(settings)
    try:
        try:
            revision = await asyncio.wait_for(current_revision(engine), DATABASE_TIMEOUT)
        except (TimeoutError, OSError, SQLAlchemyError) as exc:
            reason = "no answer within %d s" % DATABASE_TIMEOUT if isinstance(exc, TimeoutError) else _reason(exc)
            raise NotStartable(
                f"cannot reach the database at {described(settings)}: {reason}\n"
                "check ONESIGNIN_DATABASE_URL and that the database server is running and reachable"
            ) from None
    finally:
        await engine.dispose()
    if settings.is_embedded:
        return  # migrated at start
    head = head_revision()
    if revision != head:
        state = "has never been migrated" if revision is None else f"is at revision {revision}, this version needs {head}"
        raise NotStartable(f"the database at {described(settings)} {state}\nrun `onesignin migrate` (with the same ONESIGNIN_DATABASE_URL), then start again")


def _reason(exc: BaseException) -> str:
    """The driver's own words for a failed connection, on one line, with no SQL or parameters."""
    inner = getattr(exc, "orig", None) or exc
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    text = str(getattr(inner, "strerror", None) or inner).strip().splitlines()
    return (text[0] if text else type(inner).__name__)[:300]


def explain(settings: Settings, exc: BaseException) -> str | None:
    """The one or two lines for a database failure that escaped a command (the server went
    away, or the schema is missing), or None for anything else (a fault, left to propagate)."""
    from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

    if isinstance(exc, ConnectionError | socket.gaierror | TimeoutError | OperationalError | InterfaceError):
        if isinstance(exc, OperationalError) and "no such table" in str(exc.orig):
            return _unmigrated(settings)
        return (
            f"cannot reach the database at {described(settings)}: {_reason(exc)}\n"
            "check ONESIGNIN_DATABASE_URL and that the database server is running and reachable"
        )
    if isinstance(exc, ProgrammingError) and "does not exist" in str(exc.orig) and "relation" in str(exc.orig):
        return _unmigrated(settings)
    return None


def _unmigrated(settings: Settings) -> str:
    return f"the database at {described(settings)} is not migrated\nrun `onesignin migrate` (with the same ONESIGNIN_DATABASE_URL)"
