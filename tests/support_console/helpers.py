"""Staff for console tests: a hub account with a staff role and a live console session, made in
the database as `onesignin agents add` and a completed sign-in (password and TOTP) would leave
them. The sign-in itself is tested end to end in a real browser."""

from __future__ import annotations

import datetime as dt

import pyotp

from identity.appkeys import CIPHER, DB
from identity.db.models import Account, ConsoleSession, StaffMember, utcnow
from identity.support import session
from identity.support.session import Role
from identity.support.staff import seal_totp
from identity.tokens import digest, new_secret
from tests.support import Hub


async def staff_session(hub: Hub, role: Role = "agent", email: str = "agent@example.com") -> tuple[str, str]:
    """Create a staff member with an active console session; return (cookie secret, sub)."""
    sub = await hub.add_user(email=email, verified=True, given_name="Sam", family_name="Agent")
    async with hub.app[DB].begin() as db:
        from sqlalchemy import select

        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        staff = StaffMember(
            account_id=account.id,
            role=role,
            totp_secret=seal_totp(hub.app[CIPHER], pyotp.random_base32(), account.id),
        )
        db.add(staff)
        await db.flush()
        secret = new_secret()
        now = utcnow()
        db.add(
            ConsoleSession(
                secret_hash=digest(secret),
                staff_id=staff.id,
                stage="active",
                created_at=now,
                last_seen_at=now,
                expires_at=now + dt.timedelta(hours=8),
            )
        )
    return secret, sub


COOKIE = session.COOKIE
