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
from identity.i18n import _, format_day, in_their_language
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
    return verification_message(settings, account.email, secret, locale=account.locale)


@in_their_language
def verification_message(settings: Settings, to: str, secret: str) -> EmailMessage:
    url = f"{settings.issuer}/verify-email?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Confirm your email address"),
        text=_(
            "Confirm this address for your One Sign In account by opening:\n\n%(url)s\n\n"
            "The link works for 2 days. If you did not ask for this, ignore this message.\n",
            url=url,
        ),
    )


@in_their_language
def already_registered_message(settings: Settings, to: str) -> EmailMessage:
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("You already have an account"),
        text=_(
            "Someone (probably you) tried to create a One Sign In account with this address, but it already has one. "
            "Sign in at %(sign_in)s or reset your password at %(reset)s.\n\n"
            "If it was not you, you can ignore this message.\n",
            sign_in=settings.issuer + "/sign-in",
            reset=settings.issuer + "/reset-password",
        ),
    )


@in_their_language
def change_email_message(settings: Settings, to: str, secret: str) -> EmailMessage:
    """To the new address: the link that makes it the account's sign-in address."""
    url = f"{settings.issuer}/account/email/confirm?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Confirm your new sign-in address"),
        text=_(
            "Someone asked to make this address the sign-in address of a One Sign In account. "
            "To confirm that it is yours and make the change, open:\n\n%(url)s\n\n"
            "The link works for 2 days. Until it is opened nothing changes. "
            "If you did not ask for this, ignore this message.\n",
            url=url,
        ),
    )


@in_their_language
def address_in_use_message(settings: Settings, to: str) -> EmailMessage:
    """To the owner of an address another account asked to change to."""
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Someone tried to use your email address"),
        text=_(
            "Someone asked to make this address the sign-in address of another One Sign In account. "
            "It is already the sign-in address of your account, so nothing changed and your account is as it was.\n\n"
            "If it was you, sign in at %(sign_in)s with this address. If not, you can ignore this message.\n",
            sign_in=settings.issuer + "/sign-in",
        ),
    )


@in_their_language
def change_requested_message(settings: Settings, to: str, new: str | None) -> EmailMessage:
    """To the current address when a change is asked for: it still signs in and can stop it.
    ``new`` is named only to an address the account confirmed (None: not named)."""
    asked = (
        _("Someone signed in to your One Sign In account asked to change its sign-in address from this one to %(new)s.", new=new)
        if new
        else _("Someone signed in to your One Sign In account asked to change its sign-in address from this one.")
    )
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("A change of your sign-in email address was asked for"),
        text=asked
        + " "
        + _(
            "It changes only once the link we sent to the new address is opened; until then this address "
            "still signs in and receives password resets.\n\n"
            "If it was not you, reset your password at %(reset)s at once: a new password cancels the change. "
            "You can also cancel it on your account page, %(account)s.\n",
            reset=settings.issuer + "/reset-password",
            account=settings.issuer + "/account",
        ),
    )


@in_their_language
def address_changed_message(settings: Settings, old: str, new: str | None) -> EmailMessage:
    """To the former address once a change took effect. ``new`` is named only when the former
    address was confirmed (None: not named)."""
    changed = (
        _("The email address of your One Sign In account was changed from this address to %(new)s.", new=new)
        if new
        else _("The email address of your One Sign In account was changed from this address.")
    )
    return build_message(
        sender=settings.mail_from,
        to=old,
        subject=_("Your sign-in email address was changed"),
        text=changed
        + " "
        + _(
            "This address no longer signs in or receives password resets.\n\n"
            "If you did not do this, reply to this message or contact support at once: someone may be using your account.\n"
        ),
    )


@in_their_language
def reset_message(settings: Settings, to: str, secret: str) -> EmailMessage:
    url = f"{settings.issuer}/reset-password/confirm?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Reset your password"),
        text=_(
            "Choose a new password for your One Sign In account by opening:\n\n%(url)s\n\n"
            "The link works for 1 hour. If you did not ask for this, ignore this message: your password stays as it is.\n",
            url=url,
        ),
    )


@in_their_language
def guardian_message(settings: Settings, to: str, birthdate: dt.date | None, delete_after: dt.datetime | None, secret: str) -> EmailMessage:
    """To a parent or guardian a child named. It carries nothing the child typed as text (no
    name, no address): only the date of birth they gave, which the guardian can check against
    their own child's, and what happens without consent."""
    url = f"{settings.issuer}/guardian/confirm?token={secret}"
    age = settings.age_of_digital_consent
    who = (
        _(
            "A person under %(age)s, who gave their date of birth as %(birthdate)s, has a One Sign In account "
            "and gave this address as their parent's or guardian's.",
            age=age,
            birthdate=format_day(birthdate, "long"),
        )
        if birthdate
        else _("A person under %(age)s has a One Sign In account and gave this address as their parent's or guardian's.", age=age)
    )
    said = [who, _("Until a parent or guardian agrees, the account cannot be used with any member service.")]
    if delete_after:
        said.append(_("Without that consent it is deleted on %(date)s.", date=format_day(delete_after, "long")))
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Your consent is needed for a child's account"),
        text=" ".join(said)
        + "\n\n"
        + _(
            "If you know of this account and agree, open:\n\n%(url)s\n\n"
            "If you do not know of it, or do not agree, ignore this message.\n",
            url=url,
        ),
    )
