"""Registration, email verification and a guardian's consent for a child's account.

Registration answers the same way whether or not the address already has an account (the
owner of an existing address gets a mail saying so), so it reveals nothing about who is
registered."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage

from aiohttp import web
from pydantic import ValidationError

from identity.accounts import children, links
from identity.accounts.children import is_child
from identity.accounts.store import (
    create_account,
    find_by_email,
    mark_email_verified,
)
from identity.appkeys import DB, SETTINGS
from identity.db.engine import autocommit
from identity.db.models import Account, AccountStatus, utcnow
from identity.db.units import unit
from identity.i18n import _, lazy_gettext, translate
from identity.pages.common import field, hash_password, new_password_problem, render, slow_down, too_many_requests
from identity.web import after_commit, browser, csrf
from identity.web.after_commit import after_response, deliver_mail
from identity.web.responses import redirect, safe_next
from schemas.account import BasicDetails, normalize_email, problems

CHECK_MAIL = {
    "title": lazy_gettext("Check your email"),
    "message": lazy_gettext(
        "If the address can be used, we have sent a message to it. Open the link in it to confirm your address, then sign in."
    ),
}


async def register_page(request: web.Request) -> web.Response:
    return render(request, "register.html", {"next": safe_next(request.query.get("next"), "/sign-in"), "values": {}})


async def register(request: web.Request) -> web.StreamResponse:
    settings = request.config_dict[SETTINGS]
    form = await csrf.checked_form(request)
    values = {k: field(form, k, 400) for k in ("email", "given_name", "family_name", "birthdate", "guardian_email")}
    password = field(form, "password", 1024)
    target = safe_next(field(form, "next"), "/sign-in")
    errors: dict[str, str] = {}
    details: BasicDetails | None = None
    try:
        details = BasicDetails.model_validate({k: v for k, v in values.items() if v and k != "guardian_email"})
    except ValidationError as exc:
        errors.update({p.field: p.message for p in problems(exc, translate)})
    if not values["birthdate"]:
        errors["birthdate"] = _("Enter your date of birth.")
    if reason := await new_password_problem(request, password, [values["email"], values["given_name"], values["family_name"]]):
        errors["password"] = reason
    guardian: str | None = None
    child = details is not None and is_child(details.birthdate, settings.age_of_digital_consent)
    if child:
        try:
            guardian = normalize_email(values["guardian_email"])
        except ValueError:
            errors["guardian_email"] = (
                _("You are under %(age)s: enter a parent's or guardian's email address.", age=settings.age_of_digital_consent)
            )
        if guardian and details is not None and guardian == details.email:
            errors["guardian_email"] = _("Enter your parent's or guardian's own email address.")
    if errors or details is None:
        return render(request, "register.html", {"values": values, "errors": errors, "next": target}, status=400)
    # Counted before the password is hashed: a flood of registrations costs its sender, not everyone.
    if wait := await too_many_requests(request, details.email):
        context = {"values": values, "errors": {}, "error": slow_down(wait), "next": target}
        return render(request, "register.html", context, status=429)

    password_hash = await hash_password(request, password)
    mail: list[EmailMessage] = []
    async with unit(request.config_dict[DB]) as db:
        if (existing := await find_by_email(db, details.email)) is not None:
            mail.append(links.already_registered_message(settings, details.email, locale=existing.locale))
        else:
            account = await create_account(
                db,
                email=details.email,
                password_hash=password_hash,
                details=details.changes(),
                channel="person",
                status=AccountStatus.PENDING_GUARDIAN if child else AccountStatus.ACTIVE,
                guardian_email=guardian,
            )
            mail.append(await links.verification(db, settings, account))
            if child and guardian:
                # Deleted after the grace period unless the guardian consents (the retention purge).
                account.delete_after = account.created_at + dt.timedelta(days=settings.child_grace_days)
                guardian_secret = await links.issue(db, account, "guardian_consent", guardian)
                mail.append(links.guardian_message(settings, guardian, account.birthdate, account.delete_after, guardian_secret))
        after_commit.mail(db, request, mail)
    return render(request, "message.html", CHECK_MAIL | {"next": target})


async def _confirm_page(request: web.Request, purpose: str, title: str, button: str, action: str) -> web.Response:
    token = request.query.get("token", "")
    async with request.config_dict[DB]() as db:
        live = await links.find(db, token, purpose)
        signed_in = await browser.current(request, db) is not None
    if live is None:
        return render(request, "message.html", _dead_link(purpose, signed_in), status=400)
    return render(request, "confirm.html", {"title": title, "button": button, "action": action, "token": token})


#: The resend form on a page (``_resend.html``): where it posts and what its button says.
RESEND = {"action": "/verify-email/resend", "button": lazy_gettext("Send me a new confirmation link"), "ask_email": True}
RESENT = {
    "title": lazy_gettext("Check your email"),
    "message": lazy_gettext(
        "If an account with that address is waiting for its address to be confirmed, we have sent a new link to it. "
        "Open it within two days."
    ),
}


def _dead_link(purpose: str, signed_in: bool) -> dict[str, object]:
    if purpose == "guardian_consent":
        return {
            "title": _("This link no longer works"),
            "message": _("The link has expired or was already used. The child can send you a new request from their account page."),
        }
    return {
        "title": _("This link no longer works"),
        "message": _(
            "The link has expired, was already used, or a newer one was sent. Ask for a new one below; "
            "if your address is already confirmed, just sign in."
        ),
        "resend": RESEND,
        "signed_in": signed_in,
    }


async def verify_email_page(request: web.Request) -> web.Response:
    return await _confirm_page(request, "verify_email", _("Confirm your email address"), _("Confirm my address"), "/verify-email")


async def verify_email(request: web.Request) -> web.Response:
    form = await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        used = await links.consume(db, field(form, "token", 100), "verify_email")
        if used is None:
            signed_in = await browser.current(request, db) is not None
            return render(request, "message.html", _dead_link("verify_email", signed_in), status=400)
        account = await db.get(Account, used.account_id)
        if account is not None:  # the link was for its current address (links.consume)
            await mark_email_verified(db, account)
    return render(request, "message.html", {"title": _("Address confirmed"), "message": _("Thank you: your email address is confirmed."), "next": "/account"})


async def resend_verification(request: web.Request) -> web.StreamResponse:
    """A fresh link to confirm an address: the signed-in person's own, or, for someone signed
    out (a dead link's page), the address they type. Counted per client address and per typed
    address before anything is looked up, and answered the same whether or not an account is
    waiting for that address, so it can neither mail-bomb anyone nor tell who is registered."""
    settings = request.config_dict[SETTINGS]
    form = await csrf.checked_form(request)
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
    if signed_in is not None:
        email: str | None = signed_in.account.email
    else:
        try:
            email = normalize_email(field(form, "email", 320))
        except ValueError:
            email = None
        if email is None:
            context = {"title": _("Enter your email address"), "message": _("Enter the address you registered with."), "resend": RESEND}
            return render(request, "message.html", context, status=400)
    if wait := await too_many_requests(request, email):
        # Translators: the title of a page refusing a request until the person has waited a while.
        return render(request, "message.html", {"title": _("Not now"), "message": slow_down(wait), "next": "/account"}, status=429)
    if signed_in is None:
        app = request.config_dict
        assert email is not None

        async def send_link() -> None:
            async with app[DB].begin() as db:
                account = await find_by_email(db, email)
                if account is None or account.email_verified:
                    return
                message = await links.verification(db, settings, account)
            await deliver_mail(app, [message])

        # Looked up and sent once the answer is on its way: its timing says nothing either.
        await after_response(request, send_link, "confirmation link")
        return render(request, "message.html", RESENT)
    mail = []
    async with unit(request.config_dict[DB]) as db:
        current = await browser.current(request, db)
        if current is None:
            return redirect("/sign-in?next=/account", 303)
        if not current.account.email_verified:
            mail.append(await links.verification(db, settings, current.account))
        after_commit.mail(db, request, mail)
    if not mail:
        return render(request, "message.html", {"title": _("Already confirmed"), "message": _("Your email address is already confirmed."), "next": "/account"})
    context = {
        "title": _("Check your email"),
        "message": _("We sent a new confirmation link to %(email)s.", email=current.account.email),
        "next": "/account",
    }
    return render(request, "message.html", context)


async def guardian_page(request: web.Request) -> web.Response:
    return await _confirm_page(
        request, "guardian_consent",
        _("Consent to a child's account"),
        _("I am the parent or guardian and I consent"),
        "/guardian/confirm",
    )


async def guardian_confirm(request: web.Request) -> web.Response:
    form = await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        now = utcnow()
        used = await links.consume(db, field(form, "token", 100), "guardian_consent", now=now)
        if used is None:
            return render(request, "message.html", _dead_link("guardian_consent", False), status=400)
        account = await db.get(Account, used.account_id, with_for_update=True)
        if account is not None and account.status == AccountStatus.PENDING_GUARDIAN:
            await children.lift(db, account, now, by_guardian=True)
    return render(
        request,
        "message.html",
        {"title": _("Consent recorded"), "message": _("Thank you. The account can now be used with member services.")},
    )
