"""The person's linked services: unlinking one at the hub (after a confirmation step), and the
page that answers "cancel my linked accounts" with each service's own cancellation route.

The hub never cancels a service's account: each service controls its own. Unlinking stops
sharing with the service and tells it (``link.revoked``); its account stays the service's to
keep or cancel, which the pages say plainly."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from identity.accounts import link_lifecycle
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.db.engine import autocommit
from identity.db.models import Link, LinkStatus, Service
from identity.db.units import unit
from identity.i18n import _
from identity.pages.common import render
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect

MAX_CLIENT_ID = 64


def _not_found(request: web.Request) -> web.Response:
    return render(
        request,
        "message.html",
        {
            "title": _("Not linked"),
            "message": _("You have no active link to that service."),
            "next": "/account",
        },
        status=404,
    )


async def unlink_page(request: web.Request) -> web.StreamResponse:
    """Confirm before unlinking: what stops, and what stays the service's."""
    client_id = request.match_info["client_id"][:MAX_CLIENT_ID]
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account")
        service = await db.scalar(
            select(Service)
            .join(Link, Link.service_id == Service.id)
            .where(
                Service.client_id == client_id,
                Link.account_id == signed_in.account.id,
                Link.is_active,
            )
        )
    if service is None:
        return _not_found(request)
    return render(request, "unlink_confirm.html", {"service": service})


async def unlink(request: web.Request) -> web.StreamResponse:
    client_id = request.match_info["client_id"][:MAX_CLIENT_ID]
    await csrf.checked_form(request)
    settings = request.config_dict[SETTINGS]
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        logouts = await link_lifecycle.unlink(
            db,
            request.config_dict[PROVIDER].keys,
            settings.issuer,
            signed_in.account,
            client_id,
        )
        if logouts is not None:
            after_commit.wake(db, request)
            after_commit.logout(db, request, logouts)
    if logouts is None:
        return _not_found(request)
    return redirect("/account?unlinked=1", 303)


async def cancel_page(request: web.Request) -> web.StreamResponse:
    """What to do to cancel linked accounts: each service's own route. The hub cannot do it."""
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account/cancel")
        held = await link_lifecycle.held_accounts(db, signed_in.account.id)
    return render(
        request,
        "cancel_accounts.html",
        {
            "holding": [h for h in held if h.status != LinkStatus.CANCELLED],
            "cancelled": [h for h in held if h.status == LinkStatus.CANCELLED],
        },
    )
