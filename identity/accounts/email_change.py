"""Changing the sign-in address. The change waits until the person opens the link mailed to the
new address; until then the old address still signs in and receives password resets, and
nothing is sent to linked services. Only :func:`confirm` changes the account's ``email``,
through :func:`~identity.accounts.store.update_details` (history, outbox, sync as for any
change), with the new address confirmed.

A pending change is the account's live ``change_email`` link (one at a time: asking again
replaces it; a new password cancels it). It does not reserve the address: another account may
take it meanwhile, and then confirming fails and says so. Asking for an address another account
uses is answered like asking for a free one: its owner is mailed that someone tried, and no
link is sent. The old address is told when the change is asked for (so whoever holds it can
stop it while it still signs in) and again when it takes effect.

Everything runs in the caller's transaction; the messages are returned for the caller to send
after it commits."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import links
from identity.accounts.store import EmailTaken, find_by_email, mark_email_verified, update_details
from identity.db.models import Account, EmailToken, utcnow
from identity.settings import Settings

PURPOSE = "change_email"


@dataclass(frozen=True)
class Pending:
    """A change of address waiting for its link to be opened."""

    email: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Outcome:
    """What opening a change link did: ``changed``; ``taken`` (another account uses the address
    now, the change is dropped); ``dead`` (unknown, used, expired or cancelled link)."""

    result: Literal["changed", "taken", "dead"]
    email: str | None = None
    mail: list[EmailMessage] = field(default_factory=list)


async def pending(db: AsyncSession, account_id: int) -> Pending | None:
    """The account's change of address waiting to be confirmed, if any."""
    row = await db.scalar(
        select(EmailToken)
        .where(EmailToken.account_id == account_id, EmailToken.purpose == PURPOSE, EmailToken.used_at.is_(None), EmailToken.expires_at > utcnow())
        .order_by(EmailToken.created_at.desc(), EmailToken.id.desc())
        .limit(1)
    )
    return Pending(row.email, row.expires_at) if row else None


async def request(db: AsyncSession, settings: Settings, account: Account, new: str) -> list[EmailMessage]:
    """Ask for ``account``'s address to become ``new``: a pending change (replacing any earlier
    one), the link to the new address (or, when another account uses it, a notice to that
    account instead) and a notice to the current address. The same rows are written either way."""
    mail = await _link_or_notice(db, settings, account, new)
    mail.append(links.change_requested_message(settings, account.email, new if account.email_verified else None, locale=account.locale))
    return mail


async def resend(db: AsyncSession, settings: Settings, account: Account) -> list[EmailMessage]:
    """A fresh link for the pending change (the earlier one stops working); nothing if none is pending."""
    waiting = await pending(db, account.id)
    if waiting is None:
        return []
    return await _link_or_notice(db, settings, account, waiting.email)


async def cancel(db: AsyncSession, account: Account) -> bool:
    """Drop the pending change; False if there was none."""
    return await links.cancel(db, account.id, (PURPOSE,)) > 0


async def _link_or_notice(db: AsyncSession, settings: Settings, account: Account, new: str) -> list[EmailMessage]:
    secret = await links.issue(db, account, PURPOSE, new)
    if (owner := await find_by_email(db, new)) is not None:
        return [links.address_in_use_message(settings, new, locale=owner.locale)]
    return [links.change_email_message(settings, new, secret, locale=account.locale)]


async def confirm(db: AsyncSession, settings: Settings, secret: str) -> Outcome:
    """Open a change link: the account's address becomes the one the link was mailed to, now
    confirmed, and the old address is told. The link is used up whatever the outcome.

    An account that takes the address in a concurrent transaction can still beat the check
    here: the unique index then refuses the change (``IntegrityError``, from this call or the
    caller's commit), which means ``taken`` too, with the link left unused."""
    used = await links.consume(db, secret, PURPOSE)
    if used is None:
        return Outcome("dead")
    account = await db.get(Account, used.account_id)
    if account is None:
        return Outcome("dead")
    old, old_confirmed = account.email, account.email_verified
    if old == used.email:
        await mark_email_verified(db, account)
        return Outcome("changed", used.email)
    try:
        await update_details(db, account, {"email": used.email}, channel="person", actor=account.sub, email_confirmed=True)
    except EmailTaken:
        return Outcome("taken", used.email)
    return Outcome("changed", used.email, [links.address_changed_message(settings, old, used.email if old_confirmed else None, locale=account.locale)])
