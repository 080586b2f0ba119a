"""Where the person is signed in: their live hub sessions on the account page (browser and
system from the User-Agent), signing one out, and signing out everywhere. Ending a session sends
a back-channel logout to each service it signed in to and revokes the tokens issued through it
(offline refresh tokens too); everywhere revokes every token of the account."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts.user_agents import describe
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.i18n import _
from identity.db.models import BrowserSession, utcnow
from identity.db.units import unit
from identity.oidc import assurance
from identity.oidc.logout import end_session, end_sessions_of, revoke_session_tokens, revoke_tokens
from identity.pages.common import field, render
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect


async def listed(db: AsyncSession, request: web.Request, current: browser.SignedIn) -> list[dict[str, Any]]:
    """The account's live sessions, the most recently used first, for the account page."""
    now = utcnow()
    idle = dt.timedelta(seconds=request.config_dict[SETTINGS].session_idle_ttl)
    rows = (
        await db.scalars(
            select(BrowserSession)
            .where(BrowserSession.account_id == current.account.id, BrowserSession.ended_at.is_(None), BrowserSession.expires_at > now)
            .order_by(BrowserSession.last_seen_at.desc(), BrowserSession.id.desc())
        )
    ).all()
    return [
        {
            "sid": row.sid,
            "device": describe(row.user_agent),
            "signed_in": row.auth_time,
            "last_seen": row.last_seen_at,
            "two_step": assurance.has_second_factor(row.amr),
            "passkey": "pwd" not in row.amr.split() and bool(set(row.amr.split()) & assurance.KEYS),
            "this": row.id == current.session.id,
        }
        for row in rows
        if row.last_seen_at + idle > now
    ]


def _signed_out(request: web.Request, message: str) -> web.Response:
    response = render(request, "message.html", {"title": _("You are signed out"), "message": message, "next": "/sign-in", "next_label": _("Sign in")})
    browser.clear_cookie(request, response)
    return response


async def end_one(request: web.Request) -> web.StreamResponse:
    form = await csrf.checked_form(request)
    sid = field(form, "session", 64)
    settings = request.config_dict[SETTINGS]
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        row = await db.scalar(
            select(BrowserSession).where(BrowserSession.sid == sid, BrowserSession.account_id == signed_in.account.id, BrowserSession.ended_at.is_(None))
        )
        if row is None:
            return redirect("/account#sessions", 303)
        after_commit.logout(db, request, await end_session(db, request.config_dict[PROVIDER].keys, settings.issuer, row))
        await revoke_session_tokens(db, signed_in.account.id, row.sid)
        this = row.id == signed_in.session.id
    if this:
        return _signed_out(request, _("You signed this browser out; the services you used through it were told."))
    return redirect("/account?session=ended#sessions", 303)


async def end_all(request: web.Request) -> web.StreamResponse:
    """Sign out everywhere: every session (this one too), every service told, every token revoked."""
    await csrf.checked_form(request)
    settings = request.config_dict[SETTINGS]
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        after_commit.logout(db, request, await end_sessions_of(db, request.config_dict[PROVIDER].keys, settings.issuer, signed_in.account.id))
        await revoke_tokens(db, signed_in.account.id)
    return _signed_out(
        request,
        _(
            "You are signed out everywhere: every browser, and every service you signed in to was told. "
            "Services you allowed to stay connected must be signed in to again."
        ),
    )
