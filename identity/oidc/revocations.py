"""Revoked service tokens, known in memory by every hub process (Postgres).

A service token (``ost.``…, :mod:`identity.oidc.service_tokens`) is self-contained: checking it
costs a MAC and, before this registry, one database read for its revocation, on every
introspection and every call a service makes to the hub's API. On Postgres each process instead
keeps the ids of the revoked, unexpired service tokens in memory:

- it ``LISTEN``\\s on one channel, then loads every unexpired revocation (so nothing committed
  between the two is missed);
- a revocation inserts its row and ``NOTIFY``\\s the channel in the same transaction, so every
  listening process hears of it when, and only when, it commits; the process that revoked adds
  it itself and answers the revocation request only once its own listener has heard it back
  (by then Postgres has signalled every listener, since it signals them all at the commit);
- the listening connection proves itself every second with a heartbeat through the same channel:
  a process that has not heard its own heartbeat for two seconds, or lost the connection, is
  *not live* and asks the database for every token, as before, until it listens again.

On SQLite (one process) the registry is never live and every check reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from typing import Any

from sqlalchemy import make_url

log = logging.getLogger(__name__)

CHANNEL = "onesignin_service_token_revoked"
#: How often a process sends itself a heartbeat, and how long it may go without hearing one.
HEARTBEAT_SECONDS = 1.0
SILENCE_SECONDS = 2.0
#: How long a revocation answer waits for its own notification to come back.
ECHO_SECONDS = 2.0
_RECONNECT_CEILING = 5.0
#: How the listening connection shows in pg_stat_activity.
APPLICATION_NAME = "onesignin revocations"


def notify_statement(token_id: str, expires_at: dt.datetime) -> tuple[str, dict[str, str]]:
    """The statement (and its parameters) a revoking transaction runs on Postgres."""
    return "SELECT pg_notify(:channel, :payload)", {"channel": CHANNEL, "payload": f"r:{int(expires_at.timestamp())}:{token_id}"}


class RevokedServiceTokens:
    """The ids of revoked service tokens that have not expired, and whether the set is complete."""

    def __init__(self) -> None:
        self._revoked: dict[str, float] = {}  # token id -> expiry (epoch seconds)
        self._heard_at = 0.0  # monotonic time of the last heartbeat of this process heard back
        self._connected = False
        self._instance = secrets.token_hex(8)
        self._echoes: dict[str, asyncio.Future[None]] = {}
        self._pruned_at = 0.0

    @property
    def live(self) -> bool:
        return self._connected and time.monotonic() - self._heard_at < SILENCE_SECONDS

    def revoked(self, token_id: str) -> bool | None:
        """True or False when the set is live; None when the database must be asked."""
        if not self.live:
            return None
        return token_id in self._revoked

    def add(self, token_id: str, expires_at: float) -> None:
        self._revoked[token_id] = expires_at
        now = time.time()
        if now - self._pruned_at > 60:
            self._pruned_at = now
            for gone in [t for t, exp in self._revoked.items() if exp < now]:
                del self._revoked[gone]

    async def heard_back(self, token_id: str, expires_at: dt.datetime) -> None:
        """After a revocation committed: known here at once, and waited for until this process's
        listener hears its notification (or ``ECHO_SECONDS`` pass)."""
        self.add(token_id, expires_at.timestamp())
        if not self.live:
            return
        waiter = self._echoes.setdefault(token_id, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), ECHO_SECONDS)
        except TimeoutError:
            log.warning("a service token revocation was not heard back within %.0f s", ECHO_SECONDS)
        finally:
            self._echoes.pop(token_id, None)

    # the listening side ---------------------------------------------------------------

    def _lost(self, _conn: Any) -> None:
        self._connected = False

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "h":
            if rest == self._instance:
                self._heard_at = time.monotonic()
            return
        if kind != "r":
            return
        expires, _, token_id = rest.partition(":")
        try:
            self.add(token_id, float(expires))
        except ValueError:
            return
        waiter = self._echoes.get(token_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self, database_url: str) -> None:
        """Listen for as long as the process runs, reconnecting after any failure."""
        import asyncpg  # Postgres only

        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.1
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME})
                # A lost connection makes the set not live at once, not at the next heartbeat.
                conn.add_termination_listener(self._lost)
                await conn.add_listener(CHANNEL, self._on_notification)
                rows = await conn.fetch("SELECT token_id, expires_at FROM revoked_service_tokens WHERE expires_at > now()")
                # Merged, not replaced: what was heard since LISTEN stays.
                self._revoked.update({r["token_id"]: r["expires_at"].timestamp() for r in rows})
                self._connected = True
                delay = 0.1
                while not conn.is_closed():
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that arrives as the statement finishes (CPython gh-86296),
                    # and the process's shutdown would wait on this loop for ever.
                    async with asyncio.timeout(SILENCE_SECONDS):
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, "h:" + self._instance)
                    await asyncio.sleep(HEARTBEAT_SECONDS)
                    if not self.live:
                        raise ConnectionError("no heartbeat heard back")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: not live until listening again
                if self._connected:
                    log.warning("service token revocations: %s: %s; asking the database until listening again", type(exc).__name__, exc)
            finally:
                self._connected = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_CEILING)
