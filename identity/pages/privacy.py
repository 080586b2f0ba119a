"""The hub's own duties to the signed-in person, as a controller: a download of everything it
holds about them (``/account/export``), erasure of the hub account (``/account/delete``, behind
the password, refused while a linked service still holds an account), and, for a child's account
waiting for consent, naming a parent or guardian to ask (``/account/guardian``)."""

from __future__ import annotations

from email.message import EmailMessage

from aiohttp import web

from identity.accounts import erase, export, links
from identity.api.export import download
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.i18n import _
from identity.db.engine import autocommit
from identity.db.models import AccountStatus, Service
from identity.db.units import unit
from identity.pages.common import field, render, slow_down, too_many_requests
from identity.pages.sign_in import confirm_password
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect
from schemas.account import normalize_email


async def export_download(request: web.Request) -> web.StreamResponse:
    """Everything the hub holds about the signed-in person, as a JSON file."""
    async with request.config_dict[DB].begin() as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account/export")
        body = await export.build(db, signed_in.account)
    return download(body)


def _routes(services: list[Service]) -> list[dict[str, str | None]]:
    return [
        {"name": s.name, "cancellation_url": s.cancellation_url, "cancellation_instructions": s.cancellation_instructions}
        for s in services
    ]


async def delete_page(request: web.Request) -> web.StreamResponse:
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account/delete")
        blocking = await erase.blocking_services(db, signed_in.account.id)
        waiting = await erase.blocking_requests(db, signed_in.account.id)
    return render(request, "delete_account.html", {"blocking": _routes(blocking), "waiting": waiting})


async def delete(request: web.Request) -> web.StreamResponse:
    """Erase the account once the password is confirmed; refused (409) while a link is active or
    a rights request to a service is open."""
    form = await csrf.checked_form(request)
    password = field(form, "current_password", 1024)
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
    if signed_in is None:
        return redirect("/sign-in?next=/account/delete", 303)
    # The password is checked with no database connection held (argon2id takes a while).
    confirmed = await confirm_password(request, signed_in, password)
    if confirmed.ended is not None:
        return confirmed.ended
    if not confirmed.ok:
        errors = {"current_password": _("Your password is not correct.")}
        return render(request, "delete_account.html", {"blocking": [], "waiting": [], "errors": errors}, status=400)
    settings = request.config_dict[SETTINGS]
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account/delete", 303)
        try:
            logouts = await erase.erase(
                db, signed_in.account, keys=request.config_dict[PROVIDER].keys, issuer=settings.issuer, actor_kind="person"
            )
        except erase.LinksStillActive as refused:
            context = {"blocking": _routes(refused.services), "waiting": refused.requests}
            return render(request, "delete_account.html", context, status=409)
        after_commit.wake(db, request)
        after_commit.logout(db, request, logouts)
    response = render(
        request,
        "message.html",
        {
            "title": _("Your account is deleted"),
            "message": _("Your One Sign In account and the personal data it held are deleted, and you are signed out everywhere."),
        },
    )
    browser.clear_cookie(request, response)
    return response


async def guardian_page(request: web.Request) -> web.StreamResponse:
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
    if signed_in is None:
        return redirect("/sign-in?next=/account/guardian")
    if signed_in.account.status != AccountStatus.PENDING_GUARDIAN:
        return redirect("/account")
    context = {"account": signed_in.account, "values": {"guardian_email": signed_in.account.guardian_email or ""}}
    return render(request, "guardian_request.html", context | _age(request))


def _age(request: web.Request) -> dict[str, int]:
    return {"age_of_consent": request.config_dict[SETTINGS].age_of_digital_consent}


async def guardian_request(request: web.Request) -> web.StreamResponse:
    """Name a parent or guardian: they are mailed a link to consent (earlier links stop working)."""
    form = await csrf.checked_form(request)
    typed = field(form, "guardian_email", 400)
    settings = request.config_dict[SETTINGS]
    mail: list[EmailMessage] = []
    if wait := await too_many_requests(request, typed):
        return render(request, "message.html", {"title": _("Not now"), "message": slow_down(wait), "next": "/account"}, status=429)
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account/guardian", 303)
        account = signed_in.account
        if account.status != AccountStatus.PENDING_GUARDIAN:
            return redirect("/account", 303)
        try:
            guardian = normalize_email(typed)
        except ValueError:
            guardian = None
        if guardian is None or guardian == account.email:
            errors = {"guardian_email": _("Enter your parent's or guardian's own email address.")}
            context = {"account": account, "values": {"guardian_email": typed}, "errors": errors}
            return render(request, "guardian_request.html", context | _age(request), status=400)
        account.guardian_email = guardian
        secret = await links.issue(db, account, "guardian_consent", guardian)
        mail.append(links.guardian_message(settings, guardian, account.birthdate, account.delete_after, secret))
        after_commit.mail(db, request, mail)
    return render(
        request,
        "message.html",
        {
            "title": _("We asked your parent or guardian"),
            "message": _("We sent a message to %(email)s. Once they agree, your account works with member services again.", email=guardian),
            "next": "/account",
        },
    )
