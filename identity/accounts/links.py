"""Single-use links sent by mail (verify an address, reset a password, a guardian's consent)
and the messages that carry them. Messages are built inside the transaction and sent by the
caller after it commits, so no mail goes out for work that was rolled back."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Account, EmailToken, utcnow
from identity.mail import build_message
from identity.settings import Settings
from identity.tokens import digest, new_secret

LIFETIMES = {
    "verify_email": dt.timedelta(days=2),
    "reset_password": dt.timedelta(hours=1),
    "guardian_consent": dt.timedelta(days=14),
}


async def issue(db: AsyncSession, account: Account, purpose: str, email: str) -> str:
    """Create a link token (older unused ones of the same purpose stop working)."""
    now = utcnow()
    for old in await db.scalars(
        select(EmailToken).where(
            EmailToken.account_id == account.id, EmailToken.purpose == purpose, EmailToken.used_at.is_(None)
        )
    ):
        old.used_at = now
    secret = new_secret()
    db.add(
        EmailToken(
            token_hash=digest(secret),
            purpose=purpose,
            account_id=account.id,
            email=email,
            created_at=now,
            expires_at=now + LIFETIMES[purpose],
        )
    )
    await db.flush()
    return secret


async def find(db: AsyncSession, secret: str, purpose: str) -> EmailToken | None:
    """The live token for ``secret``, or None when unknown, used or expired."""
    if not secret or len(secret) > 100:
        return None
    row = await db.scalar(select(EmailToken).where(EmailToken.token_hash == digest(secret), EmailToken.purpose == purpose))
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        return None
    return row


async def verification(db: AsyncSession, settings: Settings, account: Account) -> EmailMessage:
    """A fresh link to confirm the account's current address, and the message carrying it."""
    secret = await issue(db, account, "verify_email", account.email)
    return verification_message(settings, account.email, secret)


def verification_message(settings: Settings, to: str, secret: str) -> EmailMessage:
    url = f"{settings.issuer}/verify-email?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="Confirm your email address",
        text=f"Confirm this address for your One Sign In account by opening:\n\n{url}\n\n"
        "The link works for 2 days. If you did not ask for this, ignore this message.\n",
    )


def already_registered_message(settings: Settings, to: str) -> EmailMessage:
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="You already have an account",
        text="Someone (probably you) tried to create a One Sign In account with this address, "
        f"but it already has one. Sign in at {settings.issuer}/sign-in or reset your password at "
        f"{settings.issuer}/reset-password.\n\nIf it was not you, you can ignore this message.\n",
    )


def address_changed_message(settings: Settings, old: str, new: str) -> EmailMessage:
    return build_message(
        sender=settings.mail_from,
        to=old,
        subject="Your sign-in email address was changed",
        text=f"The email address of your One Sign In account was changed from this address to {new}.\n\n"
        "If you did not do this, reply to this message or contact support at once: someone may be "
        "using your account.\n",
    )


def reset_message(settings: Settings, to: str, secret: str) -> EmailMessage:
    url = f"{settings.issuer}/reset-password/confirm?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="Reset your password",
        text=f"Choose a new password for your One Sign In account by opening:\n\n{url}\n\n"
        "The link works for 1 hour. If you did not ask for this, ignore this message: your password stays as it is.\n",
    )


def guardian_message(settings: Settings, to: str, child_name: str, secret: str) -> EmailMessage:
    url = f"{settings.issuer}/guardian/confirm?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="Your consent is needed for a child's account",
        text=f"{child_name} (under {settings.age_of_digital_consent}) created a One Sign In account and named you "
        f"as their parent or guardian. Until you agree, the account cannot be used with any member service.\n\n"
        f"To give your consent, open:\n\n{url}\n\nIf you do not agree, ignore this message.\n",
    )
