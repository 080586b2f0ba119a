"""Resetting a forgotten password (by mail) and changing a known one.

The reset request answers the same whether or not the address has an account, and in the same
time: the answer is given before the address is even looked up (the lookup, the link and the
mail run after it, :func:`~identity.web.after_commit.after_response`). Completing a reset or a
change ends every other hub session of the account, and every reset link and pending change of
the sign-in address still out."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import links, passwords
from identity.accounts.store import find_by_email
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.i18n import _, lazy_gettext
from identity.db.models import Account
from identity.db.units import unit
from identity.oidc.logout import (
    LogoutNotice,
    end_sessions_of,
    revoke_tokens,
)
from identity.pages.common import (
    field,
    hash_password,
    new_password_problem,
    render,
    slow_down,
    too_many_requests,
)
from identity.pages.sign_in import confirm_password
from identity.web import after_commit, browser, csrf
from identity.web.after_commit import after_response, deliver_mail
from identity.web.responses import redirect
from schemas.account import normalize_email


async def reset_page(request: web.Request) -> web.Response:
    return render(request, "reset_request.html")


async def reset_request(request: web.Request) -> web.Response:
    form = await csrf.checked_form(request)
    try:
        email = normalize_email(field(form, "email", 320))
    except ValueError as exc:
        return render(request, "reset_request.html", {"error": str(exc)}, status=400)
    if wait := await too_many_requests(request, email):
        return render(request, "reset_request.html", {"error": slow_down(wait)}, status=429)
    app = request.config_dict

    async def send_link() -> None:
        async with app[DB].begin() as db:
            account = await find_by_email(db, email)
            if account is None:
                return
            secret = await links.issue(db, account, "reset_password", account.email)
            message = links.reset_message(app[SETTINGS], account.email, secret, locale=account.locale)
        await deliver_mail(app, [message])

    await after_response(request, send_link, "password reset link")
    return render(
        request,
        "message.html",
        {"title": _("Check your email"), "message": _("If an account uses that address, we have sent it a link to choose a new password.")},
    )


DEAD = {
    "title": lazy_gettext("This link no longer works"),
    "message": lazy_gettext("The link has expired, was already used, or a newer one was sent. Ask for a new password reset link."),
    "next": "/reset-password",
    "next_label": lazy_gettext("Ask for a new reset link"),
}


async def reset_confirm_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    async with request.config_dict[DB]() as db:
        live = await links.find(db, token, "reset_password")
    if live is None:
        return render(request, "message.html", DEAD, status=400)
    return render(request, "reset_confirm.html", {"token": token})


async def _end_sessions(request: web.Request, db: AsyncSession, account_id: int, keep: int | None = None) -> list[LogoutNotice]:
    settings = request.config_dict[SETTINGS]
    return await end_sessions_of(db, request.config_dict[PROVIDER].keys, settings.issuer, account_id, keep=keep)


async def reset_confirm(request: web.Request) -> web.Response:
    form = await csrf.checked_form(request)
    token, password = field(form, "token", 100), field(form, "password", 1024)
    async with request.config_dict[DB]() as db:
        live = await links.find(db, token, "reset_password")
        account = await db.get(Account, live.account_id) if live else None
    if live is None or account is None:
        return render(request, "message.html", DEAD, status=400)
    if reason := await new_password_problem(request, password, [account.email, account.given_name or "", account.family_name or ""]):
        return render(request, "reset_confirm.html", {"token": token, "error": reason}, status=400)
    password_hash = await hash_password(request, password)
    async with unit(request.config_dict[DB]) as db:
        used = await links.consume(db, token, "reset_password")
        if used is None:
            return render(request, "message.html", DEAD, status=400)
        await passwords.replace(db, used.account_id, password_hash)
        await links.cancel(db, used.account_id, links.PASSWORD_BOUND)
        after_commit.logout(db, request, await _end_sessions(request, db, used.account_id))
        await revoke_tokens(db, used.account_id)
    return render(request, "message.html", {"title": _("Password changed"), "message": _("Your new password is set. Sign in with it."), "next": "/sign-in"})


async def change_page(request: web.Request) -> web.StreamResponse:
    async with request.config_dict[DB].begin() as db:
        if await browser.current(request, db) is None:
            return redirect("/sign-in?next=/account/password")
    return render(request, "change_password.html")


async def change(request: web.Request) -> web.StreamResponse:
    form = await csrf.checked_form(request)
    current_password, password = field(form, "current_password", 1024), field(form, "password", 1024)
    async with request.config_dict[DB].begin() as db:
        signed_in = await browser.current(request, db)
    if signed_in is None:
        return redirect("/sign-in?next=/account/password", 303)
    account = signed_in.account
    confirmed = await confirm_password(request, signed_in, current_password)
    if confirmed.ended is not None:
        return confirmed.ended
    if not confirmed.ok:
        errors = {"current_password": _("Your current password is not correct.")}
        return render(request, "change_password.html", {"errors": errors}, status=400)
    if reason := await new_password_problem(request, password, [account.email, account.given_name or "", account.family_name or ""]):
        return render(request, "change_password.html", {"errors": {"password": reason}}, status=400)
    password_hash = await hash_password(request, password)
    async with unit(request.config_dict[DB]) as db:
        await passwords.replace(db, account.id, password_hash)
        await links.cancel(db, account.id, links.PASSWORD_BOUND)
        after_commit.logout(db, request, await _end_sessions(request, db, account.id, keep=signed_in.session.id))
        await revoke_tokens(db, account.id, keep_sid=signed_in.session.sid)
    return render(request, "message.html", {"title": _("Password changed"), "message": _("Your new password is set."), "next": "/account"})
