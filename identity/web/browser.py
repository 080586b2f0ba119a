"""The person's single-sign-on session at the hub, kept server-side and named by a cookie.

The cookie carries a 256-bit secret; the database keeps its SHA-256 digest. Sessions expire
after ``session_ttl`` and after ``session_idle_ttl`` without use, and end at sign-out. A new
session is created at every sign-in, so a session id never survives authentication (no fixation).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.appkeys import SETTINGS
from identity.db.models import Account, BrowserSession, utcnow
from identity.tokens import digest, new_secret
from identity.web import language
from identity.web.cookies import CSRF, SESSION

COOKIE = SESSION.base
_TOUCH_AFTER = dt.timedelta(minutes=1)


@dataclass
class SignedIn:
    session: BrowserSession
    account: Account

    @property
    def auth_time(self) -> dt.datetime:
        return self.session.auth_time


async def current(request: web.Request, db: AsyncSession) -> SignedIn | None:
    """The signed-in person for this request, or None. Refreshes the idle timer."""
    secret = SESSION.read(request)
    if not secret or len(secret) > 100:
        return None
    row = await db.scalar(select(BrowserSession).where(BrowserSession.secret_hash == digest(secret)))
    now = utcnow()
    settings = request.config_dict[SETTINGS]
    if row is None or row.ended_at is not None or row.expires_at <= now:
        return None
    if row.last_seen_at + dt.timedelta(seconds=settings.session_idle_ttl) <= now:
        return None
    account = await db.get(Account, row.account_id)
    if account is None or account.disabled_at is not None:
        return None
    if now - row.last_seen_at > _TOUCH_AFTER:
        row.last_seen_at = now
    language.speak_account(account.locale)
    return SignedIn(row, account)


def new_session(request: web.Request, account_id: int, amr: str = "pwd") -> tuple[dict[str, object], str]:
    """The row of a new session for the account, and the cookie secret that names it."""
    settings = request.config_dict[SETTINGS]
    now = utcnow()
    secret = new_secret()
    row = {
        "sid": new_secret(16),
        "secret_hash": digest(secret),
        "account_id": account_id,
        "auth_time": now,
        "created_at": now,
        "last_seen_at": now,
        "expires_at": now + dt.timedelta(seconds=settings.session_ttl),
        "amr": amr,
        "user_agent": request.headers.get("User-Agent", "")[:300] or None,
    }
    return row, secret


async def start(db: AsyncSession, request: web.Request, account_id: int, amr: str = "pwd") -> str:
    """Create a session for the account (``amr``: how the person proved who they are); return
    the cookie secret to set."""
    row, secret = new_session(request, account_id, amr)
    await db.execute(insert(BrowserSession).values(**row))
    return secret


async def step_up(db: AsyncSession, session: BrowserSession, amr: str) -> str:
    """The session, now also proved by ``amr`` (a second factor given for a service that asked
    for it): kept, with its ``sid`` and services, under a new cookie secret. Returns the secret."""
    secret = new_secret()
    session.secret_hash, session.amr = digest(secret), amr
    await db.flush()
    return secret


def set_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    """Name the new session in the browser; its CSRF nonce is renewed with it, so no form
    rendered before (for another session, or none) is accepted any more."""
    SESSION.set(request, response, secret, max_age=request.config_dict[SETTINGS].session_ttl)
    CSRF.set(request, response, new_secret(24))


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    SESSION.clear(request, response)
    CSRF.set(request, response, new_secret(24))
