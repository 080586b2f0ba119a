"""A sign-in from a browser not seen before is told to the person: when, which browser and
system, and what to do if it was not them.

"Not seen before" is the device cookie of :mod:`identity.accounts.devices`: a browser that never
signed in to this account with its password. An account's first sign-in tells nothing (there is
no earlier browser to compare with); nor does a passkey sign-in, which needs the person's own
device. The mail carries nothing the person did not already know but the browser's name."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts.user_agents import describe
from identity.db.models import Account, SignInEvent, utcnow
from identity.i18n import _, format_moment, lazy_gettext, speaking
from identity.mail import build_message
from identity.settings import Settings

SUBJECT = lazy_gettext("A new sign-in to your One Sign In account")


async def notice(db: AsyncSession, settings: Settings, account_id: int, user_agent: str | None, *, at: dt.datetime | None = None) -> EmailMessage | None:
    """The mail for a sign-in that just succeeded from a new browser, or None for the account's
    first sign-in ever (the one being made is already recorded)."""
    # Whether it has two successful sign-ins (this one and an earlier), not how many it has had.
    two = select(SignInEvent.id).where(SignInEvent.account_id == account_id, SignInEvent.succeeded.is_(True)).limit(2).subquery()
    found = (
        await db.execute(
            select(Account.email, Account.locale, select(func.count()).select_from(two).scalar_subquery()).where(Account.id == account_id)
        )
    ).first()
    if found is None:
        return None
    email, locale_claim, succeeded = found
    if succeeded < 2:
        return None
    with speaking(locale_claim):
        return _message(settings, email, at or utcnow(), describe(user_agent))


def _message(settings: Settings, email: str, at: dt.datetime, browser: str) -> EmailMessage:
    when = format_moment(at)
    return build_message(
        sender=settings.mail_from,
        to=email,
        subject=str(SUBJECT),
        text=_(
            "Your One Sign In account was signed in to on %(when)s from a browser that has not signed in to it before:\n\n"
            "    %(browser)s\n\n"
            "If this was you, there is nothing to do.\n\n"
            "If it was not you, someone knows your password:\n"
            "  1. Change your password: %(password)s\n"
            "  2. Sign out everywhere, under \"Where you're signed in\": %(account)s\n"
            "  3. Turn on two-step sign-in: %(two_step)s\n",
            when=when,
            browser=browser,
            password=settings.issuer + "/account/password",
            account=settings.issuer + "/account",
            two_step=settings.issuer + "/account/two-step",
        ),
    )
