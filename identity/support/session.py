"""The console session: who the staff member is for this request.

The cookie ``osi_console`` (path ``/support``, HttpOnly, SameSite=Strict) carries a 256-bit
secret whose SHA-256 digest names a ``console_sessions`` row. A row in stage ``totp`` only lets
its holder enter the second factor; ``active`` opens the console. A session ends after
``console_idle_ttl`` seconds without use, after ``console_session_ttl``, at sign-out, or when the
staff member is disabled."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.appkeys import SETTINGS
from identity.db.models import Account, ConsoleSession, StaffMember, utcnow
from identity.tokens import digest, new_secret
from identity.web.cookies import CONSOLE

COOKIE = CONSOLE.base
PATH = "/support"
Role = Literal["agent", "supervisor", "admin", "service_owner"]
_TOUCH_AFTER = dt.timedelta(seconds=30)


@dataclass(frozen=True)
class Agent:
    """The signed-in staff member."""

    session_id: int
    staff_id: int
    account_id: int
    sub: str
    email: str
    role: Role
    stage: str

    @property
    def is_supervisor(self) -> bool:
        return self.role == "supervisor"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def helps_people(self) -> bool:
        """Agents and supervisors: the only roles that search for and look at people."""
        return self.role in ("agent", "supervisor")


#: The staff member behind the request, set by the console's middleware.
AGENT = web.RequestKey("agent", Agent)


async def current(request: web.Request, db: AsyncSession) -> Agent | None:
    """The console session named by the cookie, if live; refreshes its idle timer."""
    secret = CONSOLE.read(request)
    if not secret or len(secret) > 100:
        return None
    row = (
        await db.execute(
            select(ConsoleSession, StaffMember, Account.sub, Account.email)
            .join(StaffMember, StaffMember.id == ConsoleSession.staff_id)
            .join(Account, Account.id == StaffMember.account_id)
            .where(ConsoleSession.secret_hash == digest(secret))
        )
    ).first()
    if row is None:
        return None
    session, staff, sub, email = row
    now = utcnow()
    settings = request.config_dict[SETTINGS]
    if session.ended_at is not None or session.expires_at <= now or staff.disabled_at is not None:
        return None
    if session.last_seen_at + dt.timedelta(seconds=settings.console_idle_ttl) <= now:
        return None
    if now - session.last_seen_at > _TOUCH_AFTER:
        session.last_seen_at = now
    return Agent(session.id, staff.id, staff.account_id, sub, email, staff.role, session.stage)  # type: ignore[arg-type]


def new_session(request: web.Request, staff_id: int, *, stage: str, address: str | None) -> tuple[ConsoleSession, str]:
    """A new session row (to add to the caller's transaction) and the cookie secret naming it.
    A new row is made at every sign-in and after the second factor, so no id survives a step up."""
    settings = request.config_dict[SETTINGS]
    now = utcnow()
    secret = new_secret()
    lifetime = 300 if stage == "totp" else settings.console_session_ttl
    row = ConsoleSession(
        secret_hash=digest(secret),
        staff_id=staff_id,
        stage=stage,
        address=address,
        created_at=now,
        last_seen_at=now,
        expires_at=now + dt.timedelta(seconds=lifetime),
    )
    return row, secret


def set_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    CONSOLE.set(request, response, secret, path=PATH)


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    CONSOLE.clear(request, response, path=PATH)
