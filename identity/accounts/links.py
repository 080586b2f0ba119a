"""Single-use links sent by mail (verify an address, reset a password, a guardian's consent,
confirm a new sign-in address) and the messages that carry them. Messages are built inside the
transaction and sent by the caller after it commits, so no mail goes out for work that was
rolled back.

A link is used by :func:`consume`: one conditional ``UPDATE ... RETURNING`` in the transaction
that acts on it, so of two simultaneous uses exactly one gets it. A reset or confirmation link
works only while the account's address is the one it was mailed to, and an address or password
change cancels the links it makes stale (:func:`cancel`). Whatever writes an account's links
locks the account's row first (:func:`issue` and :func:`consume` do; a change of address or
password holds it already), so two such transactions never wait for each other in opposite
orders.

No message to an address that is not the account's own confirmed one carries text a person
typed (a name, another address): mail to a guardian, to an address not yet confirmed, or to the
owner of an address someone else tried to use says only what the hub itself knows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Account, EmailToken, utcnow
from identity.mail import build_message
from identity.settings import Settings
from identity.tokens import digest, new_secret

LIFETIMES = {
    "verify_email": dt.timedelta(days=2),
    "reset_password": dt.timedelta(hours=1),
    "guardian_consent": dt.timedelta(days=14),
    "change_email": dt.timedelta(days=2),
}

#: Links that act for the account's current address: they die when it changes.
ADDRESS_BOUND = ("verify_email", "reset_password")
#: Links a new password makes stale: a reset link, and a pending change of the sign-in address
#: (asked for, perhaps, by whoever the new password locks out).
PASSWORD_BOUND = ("reset_password", "change_email")


@dataclass(frozen=True)
class UsedLink:
    """A link that :func:`consume` just used: whose it is, and the address it was mailed to."""

    account_id: int
    email: str


async def _lock_account(db: AsyncSession, account_id: int) -> None:
    await db.execute(select(Account.id).where(Account.id == account_id).with_for_update())


async def issue(db: AsyncSession, account: Account, purpose: str, email: str) -> str:
    """Create a link token (older unused ones of the same purpose stop working)."""
    now = utcnow()
    await _lock_account(db, account.id)
    await cancel(db, account.id, (purpose,), now=now)
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


def _live(secret: str, purpose: str, now: dt.datetime) -> list[object]:
    conditions: list[object] = [
        EmailToken.token_hash == digest(secret),
        EmailToken.purpose == purpose,
        EmailToken.used_at.is_(None),
        EmailToken.expires_at > now,
    ]
    if purpose in ADDRESS_BOUND:
        current = select(Account.email).where(Account.id == EmailToken.account_id).scalar_subquery()
        conditions.append(EmailToken.email == current)
    return conditions


def _plausible(secret: str) -> bool:
    return bool(secret) and len(secret) <= 100


async def find(db: AsyncSession, secret: str, purpose: str) -> EmailToken | None:
    """The live token for ``secret``, or None when unknown, used, expired or stale; it stays
    unused (a page showing the link's form). Acting on a link needs :func:`consume`."""
    if not _plausible(secret):
        return None
    return await db.scalar(select(EmailToken).where(*_live(secret, purpose, utcnow())))


async def consume(db: AsyncSession, secret: str, purpose: str, *, now: dt.datetime | None = None) -> UsedLink | None:
    """Use the link ``secret``: mark it used, in one statement, if it is live; None when it is
    unknown, used, expired or stale. Call it in the transaction that acts on the link, which
    then holds the account's row: a simultaneous use waits for this transaction (Postgres's row
    locks, SQLite's write lock) and then finds the link used; and if this one rolls back, the
    link is still unused."""
    if not _plausible(secret):
        return None
    now = now or utcnow()
    account_id = await db.scalar(select(EmailToken.account_id).where(EmailToken.token_hash == digest(secret), EmailToken.purpose == purpose))
    if account_id is None:
        return None
    await _lock_account(db, account_id)
    row = (
        await db.execute(
            update(EmailToken)
            .where(*_live(secret, purpose, now))
            .values(used_at=now)
            .returning(EmailToken.account_id, EmailToken.email)
            .execution_options(synchronize_session=False)
        )
    ).first()
    return UsedLink(account_id=row.account_id, email=row.email) if row else None


async def cancel(db: AsyncSession, account_id: int, purposes: Iterable[str], *, now: dt.datetime | None = None) -> int:
    """End the account's unused links of ``purposes`` (they then count as used); return how many."""
    statement = (
        update(EmailToken)
        .where(EmailToken.account_id == account_id, EmailToken.purpose.in_(list(purposes)), EmailToken.used_at.is_(None))
        .values(used_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return (await db.execute(statement)).rowcount or 0


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


def change_email_message(settings: Settings, to: str, secret: str) -> EmailMessage:
    """To the new address: the link that makes it the account's sign-in address."""
    url = f"{settings.issuer}/account/email/confirm?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="Confirm your new sign-in address",
        text="Someone asked to make this address the sign-in address of a One Sign In account. "
        f"To confirm that it is yours and make the change, open:\n\n{url}\n\n"
        "The link works for 2 days. Until it is opened nothing changes. "
        "If you did not ask for this, ignore this message.\n",
    )


def address_in_use_message(settings: Settings, to: str) -> EmailMessage:
    """To the owner of an address another account asked to change to."""
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="Someone tried to use your email address",
        text="Someone asked to make this address the sign-in address of another One Sign In account. "
        "It is already the sign-in address of your account, so nothing changed and your account is "
        f"as it was.\n\nIf it was you, sign in at {settings.issuer}/sign-in with this address. "
        "If not, you can ignore this message.\n",
    )


def change_requested_message(settings: Settings, to: str, new: str | None) -> EmailMessage:
    """To the current address when a change is asked for: it still signs in and can stop it.
    ``new`` is named only to an address the account confirmed (None: not named)."""
    target = f" to {new}" if new else ""
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="A change of your sign-in email address was asked for",
        text=f"Someone signed in to your One Sign In account asked to change its sign-in address from this one{target}. "
        "It changes only once the link we sent to the new address is opened; until then this address "
        "still signs in and receives password resets.\n\n"
        f"If it was not you, reset your password at {settings.issuer}/reset-password at once: a new "
        f"password cancels the change. You can also cancel it on your account page, {settings.issuer}/account.\n",
    )


def address_changed_message(settings: Settings, old: str, new: str | None) -> EmailMessage:
    """To the former address once a change took effect. ``new`` is named only when the former
    address was confirmed (None: not named)."""
    target = f" to {new}" if new else ""
    return build_message(
        sender=settings.mail_from,
        to=old,
        subject="Your sign-in email address was changed",
        text=f"The email address of your One Sign In account was changed from this address{target}. "
        "This address no longer signs in or receives password resets.\n\n"
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


def guardian_message(settings: Settings, to: str, birthdate: dt.date | None, delete_after: dt.datetime | None, secret: str) -> EmailMessage:
    """To a parent or guardian a child named. It carries nothing the child typed as text (no
    name, no address): only the date of birth they gave, which the guardian can check against
    their own child's, and what happens without consent."""
    url = f"{settings.issuer}/guardian/confirm?token={secret}"
    born = f", who gave their date of birth as {_day(birthdate)}," if birthdate else ""
    deadline = f" Without that consent it is deleted on {_day(delete_after)}." if delete_after else ""
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject="Your consent is needed for a child's account",
        text=f"A person under {settings.age_of_digital_consent}{born} has a One Sign In account and gave this address "
        "as their parent's or guardian's. Until a parent or guardian agrees, the account cannot be used with any "
        f"member service.{deadline}\n\n"
        "If you know of this account and agree, open:\n\n"
        f"{url}\n\n"
        "If you do not know of it, or do not agree, ignore this message.\n",
    )


def _day(when: dt.date) -> str:
    return f"{when.day} {when:%B %Y}"
