"""What operators do to a person's account (``onesignin users ...``): list, show, disable and
enable it, lift a sign-in lockout, end every session. Each change writes an audit record in the
caller's transaction. Functions take the caller's session and never commit; back-channel logout
notices are returned, to be sent once the caller commits."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import second_factor, throttle
from identity.accounts.store import find_by_sub
from identity.admin import InvalidInput
from identity.db.models import Account, BrowserSession, Link, Service, Throttle, utcnow
from identity.oidc.keys import KeyRing
from identity.ssf import emit, events
from identity.oidc.logout import LogoutNotice, end_sessions_of, revoke_tokens
from identity.support.audit import record

#: The most accounts ``users list`` prints at once.
MOST_LISTED = 1000


def _when(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


async def find(db: AsyncSession, sub: str, *, lock: bool = False) -> Account:
    account = await find_by_sub(db, sub)
    if account is None:
        raise InvalidInput(f"no account with sub {sub!r} (see `onesignin users list`)")
    if lock:
        await db.refresh(account, with_for_update=True)
    return account


def _lock_keys(account: Account) -> list[str]:
    """The throttle keys that can hold the account's sign-in back: its address's password
    checks and its second-factor codes (a browser's own key only slows that browser)."""
    return [throttle.email_key("account", account.email), throttle.email_key("second-factor", account.email)]


def _summary(account: Account) -> dict[str, Any]:
    return {
        "sub": account.sub,
        "email": account.email,
        "email_verified": bool(account.email_verified),
        "status": "disabled" if account.disabled_at else account.status,
        "created_at": _when(account.created_at),
    }


async def listing(db: AsyncSession, *, email_prefix: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Accounts by email address (those starting with ``email_prefix``), at most ``limit``."""
    if not 0 < limit <= MOST_LISTED:
        raise InvalidInput(f"--limit must be between 1 and {MOST_LISTED}")
    query = select(Account).order_by(Account.email).limit(limit)
    if email_prefix:
        escaped = email_prefix.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Account.email.like(escaped + "%", escape="\\"))
    return [_summary(a) for a in (await db.scalars(query)).all()]


async def show(db: AsyncSession, sub: str) -> dict[str, Any]:
    """One account: its standing, live sessions, second factor, lockout and linked services."""
    account = await find(db, sub)
    now = utcnow()
    sessions = await db.scalar(
        select(func.count()).select_from(BrowserSession).where(
            BrowserSession.account_id == account.id, BrowserSession.ended_at.is_(None), BrowserSession.expires_at > now
        )
    )
    locked = await db.scalar(select(func.max(Throttle.locked_until)).where(Throttle.key.in_(_lock_keys(account))))
    links = (
        await db.execute(
            select(Service.client_id, Service.name, Link.status)
            .join(Service, Service.id == Link.service_id)
            .where(Link.account_id == account.id)
            .order_by(Link.created_at)
        )
    ).all()
    return _summary(account) | {
        "disabled_at": _when(account.disabled_at),
        "two_step": await second_factor.enrolled(db, account.id),
        "live_sessions": sessions or 0,
        "locked_until": _when(locked) if locked and locked > now else None,
        "links": [{"client_id": c, "name": n, "status": s} for c, n, s in links],
    }


@dataclass(frozen=True)
class Changed:
    summary: dict[str, Any]
    logouts: list[LogoutNotice]


async def end_sessions(
    db: AsyncSession, keys: KeyRing, issuer: str, sub: str, *, actor: str, reason: str | None = None
) -> Changed:
    """What "Sign out everywhere" on the account page does: every session ended (each service it
    signed in to told by back-channel logout), every token of the account revoked."""
    account = await find(db, sub, lock=True)
    ended = await _end_everything(db, keys, issuer, account)
    record(db, actor_kind="cli", actor=actor, action="account.sessions_ended", account_sub=account.sub, reason=reason)
    return Changed({"sub": account.sub, "sessions_ended": ended[0]}, ended[1])


async def _end_everything(db: AsyncSession, keys: KeyRing, issuer: str, account: Account) -> tuple[int, list[LogoutNotice]]:
    live = await db.scalar(
        select(func.count()).select_from(BrowserSession).where(BrowserSession.account_id == account.id, BrowserSession.ended_at.is_(None))
    )
    notices = await end_sessions_of(db, keys, issuer, account.id, initiator="admin")
    await revoke_tokens(db, account.id)
    return live or 0, notices


async def set_disabled(
    db: AsyncSession, keys: KeyRing, issuer: str, sub: str, disabled: bool, *, actor: str, reason: str | None = None
) -> Changed:
    """Disable an account (it cannot sign in; its sessions end and its tokens are revoked as by
    ``end_sessions``; its links and data stay) or enable it again. Idempotent."""
    account = await find(db, sub, lock=True)
    notices: list[LogoutNotice] = []
    if disabled:
        if account.disabled_at is None:
            account.disabled_at = utcnow()
            await emit.emit(db, account.id, events.account_disabled())
        notices = (await _end_everything(db, keys, issuer, account))[1]
    else:
        if account.disabled_at is not None:
            await emit.emit(db, account.id, events.account_enabled())
        account.disabled_at = None
    record(db, actor_kind="cli", actor=actor, action="account.disabled" if disabled else "account.enabled", account_sub=account.sub, reason=reason)
    await db.flush()
    return Changed({"sub": account.sub, "status": _summary(account)["status"], "disabled_at": _when(account.disabled_at)}, notices)


async def unlock(db: AsyncSession, sub: str, *, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Lift the waits failed passwords or second-factor codes put on the account's address."""
    account = await find(db, sub)
    now = utcnow()
    keys = _lock_keys(account)
    locked = await db.scalar(select(func.count()).select_from(Throttle).where(Throttle.key.in_(keys), Throttle.locked_until > now))
    await db.execute(delete(Throttle).where(Throttle.key.in_(keys)))
    record(db, actor_kind="cli", actor=actor, action="account.unlocked", account_sub=account.sub, reason=reason, detail={"was_locked": bool(locked)})
    return {"sub": account.sub, "was_locked": bool(locked)}
