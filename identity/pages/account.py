"""The person's own account page: basic details, editing them (a new sign-in address waits for
its confirmation: ``identity.accounts.email_change``), and linked services."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import select

from identity.accounts import email_change, passkeys, second_factor
from identity.accounts.children import ChildPolicy
from identity.accounts.store import update_details
from identity.appkeys import DB, SETTINGS
from identity.i18n import _, translate
from identity.db.engine import autocommit
from identity.db.models import Link, Service, utcnow
from identity.db.units import unit
from identity.oidc import scopes
from identity.pages import passkey_offers, sessions
from identity.pages.common import field, render
from identity.pages.register import RESEND
from identity.pages.sign_in import confirm_password
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect
from schemas.account import BasicDetailsUpdate, form_errors

#: A sign-in this recent stands for the password when adding or removing a passkey
#: (``identity.pages.passkeys.FRESH_SECONDS``).
FRESH_SECONDS = 600
TEXT_FIELDS = ("given_name", "family_name", "email", "birthdate", "phone_number", "locale", "zoneinfo")
ADDRESS_FIELDS = ("street_address", "locality", "region", "postal_code", "country")
MARKETING = ("marketing_news", "marketing_competitions", "marketing_offers")


async def _page(request: web.Request, signed_in: browser.SignedIn, db: Any, **extra: Any) -> web.Response:
    account = signed_in.account
    rows = (
        await db.execute(
            select(Link, Service.name, Service.client_id).join(Service, Service.id == Link.service_id).where(Link.account_id == account.id).order_by(Link.created_at)
        )
    ).all()
    values = {f: getattr(account, f) or "" for f in TEXT_FIELDS} | {f: (account.address or {}).get(f, "") for f in ADDRESS_FIELDS}
    values["birthdate"] = account.birthdate.isoformat() if account.birthdate else ""
    adding, ceremony = await passkey_offers.registration(request, db, account)
    context = {
        "passkeys": await passkeys.listed(db, account.id),
        "passkey_add": adding,
        "passkey_fresh": utcnow() - signed_in.auth_time <= dt.timedelta(seconds=FRESH_SECONDS),
        "account": account,
        "signed_in": True,
        "two_step": await second_factor.enrolled(db, account.id),
        "sessions": await sessions.listed(db, request, signed_in),
        "pending_email": await email_change.pending(db, account.id),
        "values": extra.pop("values", values),
        "links": [
            {
                "name": name,
                "client_id": client_id,
                "status": link.status,
                "shares": scopes.described(link.scope),
                "since": link.created_at,
                "ended": link.ended_at,
            }
            for link, name, client_id in rows
        ],
        **extra,
    }
    response = render(request, "account.html", context, status=extra.get("status", 200))
    passkey_offers.set_ceremony(request, response, ceremony)
    return response


async def account_page(request: web.Request) -> web.StreamResponse:
    async with request.config_dict[DB].begin() as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account")
        return await _page(
            request,
            signed_in,
            db,
            saved=request.query.get("saved") == "1",
            unlinked=request.query.get("unlinked") == "1",
            email_notice=request.query.get("email", ""),
            resend=RESEND,
            two_step_notice=request.query.get("two_step", ""),
            passkey_notice=request.query.get("passkey", ""),
            session_ended=request.query.get("session") == "ended",
        )


async def edit_details(request: web.Request) -> web.StreamResponse:
    settings = request.config_dict[SETTINGS]
    form = await csrf.checked_form(request)
    raw = {f: field(form, f, 400).strip() for f in TEXT_FIELDS}
    body: dict[str, Any] = {k: (v or None) for k, v in raw.items()}
    body["email"] = raw["email"]
    address = {f: field(form, f, 400).strip() for f in ADDRESS_FIELDS}
    body["address"] = {k: v for k, v in address.items() if v} or None
    for name in MARKETING:
        body[name] = form.get(name) == "on"
    try:
        update = BasicDetailsUpdate.model_validate(body)
        problems_found: dict[str, str] = {}
    except ValidationError as exc:
        update = None
        problems_found = form_errors(exc, translate)
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        if update is None:
            return await _page(request, signed_in, db, values=raw | address, errors=problems_found, status=400)
    new_email = update.email if update.email != signed_in.account.email else None
    if new_email is not None:
        # Changing the address that signs in and receives resets needs the password, checked
        # with no database connection held.
        confirmed = await confirm_password(request, signed_in, field(form, "current_password", 1024))
        if confirmed.ended is not None:
            return confirmed.ended
        if not confirmed.ok:
            errors = {"current_password": _("Enter your current password to change your email address.")}
            async with autocommit(request.config_dict[DB]) as db:
                return await _page(request, signed_in, db, values=raw | address, errors=errors, status=400)
    changes = update.changes()
    changes.pop("email", None)
    mail = []
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        account = signed_in.account
        await update_details(db, account, changes, channel="person", actor=account.sub, children=ChildPolicy.of(settings))
        if new_email is not None and new_email != account.email:
            # Pending until the link mailed to the new address is opened (the same answer
            # whether or not another account uses it: its owner is told instead).
            mail = await email_change.request(db, settings, account, new_email)
        after_commit.wake(db, request)  # a restriction's notices, if the date of birth made it one
        after_commit.mail(db, request, mail)
    return redirect("/account?saved=1&email=sent" if mail else "/account?saved=1", 303)
