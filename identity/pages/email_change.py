"""A change of the sign-in address (``identity.accounts.email_change``): the link mailed to the
new address, and the account page's buttons to send it again or cancel the change."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from identity.accounts import email_change, links
from identity.appkeys import DB, SETTINGS
from identity.db.engine import autocommit
from identity.db.units import unit
from identity.i18n import _, lazy_gettext
from identity.pages.common import field, render, slow_down, too_many_requests
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect

DEAD = {
    "title": lazy_gettext("This link no longer works"),
    "message": lazy_gettext(
        "The link has expired, was already used, or the change was cancelled. Send a new link to your new address, "
        "or ask for the change again on your account page."
    ),
    "resend": {"action": "/account/email/resend", "button": lazy_gettext("Send a new link to my new address")},
    "next": "/account",
    "next_label": lazy_gettext("Go to your account"),
}
TAKEN = {
    "title": lazy_gettext("That address is taken"),
    "message": lazy_gettext(
        "Another One Sign In account started using that address after you asked for the change, so your sign-in "
        "address stays as it was. Choose another address on your account page."
    ),
    "next": "/account",
}


async def confirm_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    async with request.config_dict[DB]() as db:
        live = await links.find(db, token, email_change.PURPOSE)
    if live is None:
        return render(request, "message.html", DEAD, status=400)
    context = {
        "title": _("Confirm your new sign-in address"),
        "button": _("Make it my sign-in address"),
        "action": "/account/email/confirm",
        "token": token,
    }
    return render(request, "confirm.html", context)


async def confirm(request: web.Request) -> web.Response:
    form = await csrf.checked_form(request)
    try:
        async with unit(request.config_dict[DB]) as db:
            outcome = await email_change.confirm(db, request.config_dict[SETTINGS], field(form, "token", 100))
            after_commit.mail(db, request, outcome.mail)
    except IntegrityError:  # another account took the address in a concurrent transaction
        return render(request, "message.html", TAKEN, status=409)
    if outcome.result == "dead":
        return render(request, "message.html", DEAD, status=400)
    if outcome.result == "taken":
        return render(request, "message.html", TAKEN, status=409)
    message = _("Your sign-in address is now %(email)s, and it is confirmed. Your linked services are being told.", email=outcome.email)
    return render(request, "message.html", {"title": _("Address changed"), "message": message, "next": "/account"})


async def resend(request: web.Request) -> web.StreamResponse:
    await csrf.checked_form(request)
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        waiting = await email_change.pending(db, signed_in.account.id) if signed_in else None
    if signed_in is None:
        return redirect("/sign-in?next=/account", 303)
    if waiting is not None and (wait := await too_many_requests(request, waiting.email)):
        return render(request, "message.html", {"title": _("Not now"), "message": slow_down(wait), "next": "/account"}, status=429)
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        mail = await email_change.resend(db, request.config_dict[SETTINGS], signed_in.account)
        after_commit.mail(db, request, mail)
    return redirect("/account?email=sent" if mail else "/account", 303)


async def cancel(request: web.Request) -> web.StreamResponse:
    await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        cancelled = await email_change.cancel(db, signed_in.account)
    return redirect("/account?email=cancelled" if cancelled else "/account", 303)
