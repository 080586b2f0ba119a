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
from identity.pages.common import field, hash_password, new_password_problem, render, slow_down, too_many_requests
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect, safe_next
from schemas.account import BasicDetails, normalize_email, problems

CHECK_MAIL = {
    "title": "Check your email",
    "message": "If the address can be used, we have sent a message to it. Open the link in it to confirm your "
    "address, then sign in.",
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
        errors.update({p.field: p.message for p in problems(exc)})
    if not values["birthdate"]:
        errors["birthdate"] = "Enter your date of birth."
    if reason := await new_password_problem(request, password, [values["email"], values["given_name"], values["family_name"]]):
        errors["password"] = reason
    guardian: str | None = None
    child = details is not None and is_child(details.birthdate, settings.age_of_digital_consent)
    if child:
        try:
            guardian = normalize_email(values["guardian_email"])
        except ValueError:
            errors["guardian_email"] = (
                f"You are under {settings.age_of_digital_consent}: enter a parent's or guardian's email address."
            )
        if guardian and details is not None and guardian == details.email:
            errors["guardian_email"] = "Enter your parent's or guardian's own email address."
    if errors or details is None:
        return render(request, "register.html", {"values": values, "errors": errors, "next": target}, status=400)
    # Counted before the password is hashed: a flood of registrations costs its sender, not everyone.
    if wait := await too_many_requests(request, details.email):
        context = {"values": values, "errors": {}, "error": slow_down(wait), "next": target}
        return render(request, "register.html", context, status=429)

    password_hash = await hash_password(request, password)
    mail: list[EmailMessage] = []
    async with unit(request.config_dict[DB]) as db:
        if await find_by_email(db, details.email) is not None:
            mail.append(links.already_registered_message(settings, details.email))
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
    if live is None:
        return render(request, "message.html", _dead_link(), status=400)
    return render(request, "confirm.html", {"title": title, "button": button, "action": action, "token": token})


def _dead_link() -> dict[str, str]:
    return {"title": "This link no longer works", "message": "The link has expired or was already used. Ask for a new one."}


async def verify_email_page(request: web.Request) -> web.Response:
    return await _confirm_page(request, "verify_email", "Confirm your email address", "Confirm my address", "/verify-email")


async def verify_email(request: web.Request) -> web.Response:
    form = await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        used = await links.consume(db, field(form, "token", 100), "verify_email")
        if used is None:
            return render(request, "message.html", _dead_link(), status=400)
        account = await db.get(Account, used.account_id)
        if account is not None:  # the link was for its current address (links.consume)
            await mark_email_verified(db, account)
    return render(request, "message.html", {"title": "Address confirmed", "message": "Thank you: your email address is confirmed.", "next": "/account"})


async def resend_verification(request: web.Request) -> web.StreamResponse:
    """Send the signed-in person a fresh link to confirm their address."""
    settings = request.config_dict[SETTINGS]
    await csrf.checked_form(request)
    mail = []
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
    if signed_in is None:
        return redirect("/sign-in", 303)
    if wait := await too_many_requests(request, signed_in.account.email):
        return render(request, "message.html", {"title": "Not now", "message": slow_down(wait), "next": "/account"}, status=429)
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in", 303)
        account = signed_in.account
        if not account.email_verified:
            mail.append(await links.verification(db, settings, account))
        after_commit.mail(db, request, mail)
    return render(
        request,
        "message.html",
        {"title": "Check your email", "message": f"We sent a new confirmation link to {account.email}."},
    )


async def guardian_page(request: web.Request) -> web.Response:
    return await _confirm_page(
        request, "guardian_consent", "Consent to a child's account", "I am the parent or guardian and I consent", "/guardian/confirm"
    )


async def guardian_confirm(request: web.Request) -> web.Response:
    form = await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        now = utcnow()
        used = await links.consume(db, field(form, "token", 100), "guardian_consent", now=now)
        if used is None:
            return render(request, "message.html", _dead_link(), status=400)
        account = await db.get(Account, used.account_id, with_for_update=True)
        if account is not None and account.status == AccountStatus.PENDING_GUARDIAN:
            await children.lift(db, account, now, by_guardian=True)
    return render(
        request,
        "message.html",
        {"title": "Consent recorded", "message": "Thank you. The account can now be used with member services."},
    )
