"""What an agent can do for a person from their profile: correct basic details, resend the
address confirmation, open a rights request on their behalf, and resync one linked service.
Each writes its audit record in the transaction that does the work, so neither exists without
the other; mail and notices go out after the commit. No action cancels a service's account,
changes the sign-in email address or password, or touches marketing consents (the person's own)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import select

from identity.support.words import _
from identity import deliveries as status
from identity import rights
from identity.accounts import links
from identity.accounts.children import ChildPolicy, OnlyThePerson
from identity.accounts.store import update_details
from identity.appkeys import DB, SETTINGS
from identity.db.models import Link, Service
from identity.db.units import unit
from identity.pages.common import field
from identity.pages.rights import MAX_DETAILS, TYPES
from identity.support import audit, forms
from identity.support.people import (
    ERRORS,
    account_or_404,
    person_path,
    read_reason,
    reason_problem,
)
from identity.support.render import render
from identity.support.session import AGENT
from identity.web import after_commit
from identity.web.responses import redirect
from schemas.account import BasicDetailsUpdate, form_errors
from schemas.text import check_multiline

#: Prefilled in the edit form: an empty value clears the field.
PLAIN = ("given_name", "family_name", "locale", "zoneinfo")
#: Masked, so never prefilled: an empty value keeps the field, unless "clear" is ticked.
MASKED_TEXT = ("birthdate", "phone_number")
ADDRESS = ("street_address", "locality", "region", "postal_code", "country")


def _edit_body(form: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The claims to change (as the profile API takes them), and the values as typed."""
    typed = {f: field(form, f, 400).strip() for f in (*PLAIN, *MASKED_TEXT, *ADDRESS)}
    body: dict[str, Any] = {f: typed[f] or None for f in PLAIN}
    for name in MASKED_TEXT:
        if form.get(f"clear_{name}") == "on":
            body[name] = None
        elif typed[name]:
            body[name] = typed[name]
    if form.get("clear_address") == "on":
        body["address"] = None
    elif any(typed[p] for p in ADDRESS):
        body["address"] = {p: typed[p] for p in ADDRESS if typed[p]}
    return body, typed


async def edit(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    settings = request.config_dict[SETTINGS]
    form = await forms.checked_form(request)
    sub = request.match_info["sub"]
    body, typed = _edit_body(form)
    reason = read_reason(form)
    errors: dict[str, str] = {}
    if reason_problem(reason):
        errors["reason"] = ERRORS["reason"]
    try:
        changes = BasicDetailsUpdate.model_validate(body).changes()
    except ValidationError as exc:
        changes = {}
        errors |= form_errors(exc)
    if errors:
        # Only what the agent typed is shown back: nothing is read, so nothing is recorded.
        context = {"sub": sub, "values": typed | {"reason": reason}, "errors": errors, "title": _("Correct the details")}
        return render(request, "person_edit.html", context, status=400)
    try:
        async with unit(request.config_dict[DB]) as db:
            account = await account_or_404(db, request, acting=True)
            changed = await update_details(db, account, changes, channel="support", actor=agent.sub, children=ChildPolicy.of(settings))
            if changed:
                audit.record(
                    db, actor_kind="agent", actor=agent.sub, action="support.edit", account_sub=account.sub, reason=reason, detail={"fields": changed}
                )
            after_commit.wake(db, request)  # a restriction's notices, if the date of birth made it one
    except OnlyThePerson as refused:
        # Rolled back whole: nothing saved, and nothing recorded.
        context = {"sub": sub, "values": typed | {"reason": reason}, "errors": {refused.field: refused.public}, "title": _("Correct the details")}
        return render(request, "person_edit.html", context, status=400)
    return redirect(person_path(sub, done="saved" if changed else "nochange"), 303)


async def resend_verification(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    form = await forms.checked_form(request)
    sub = request.match_info["sub"]
    async with unit(request.config_dict[DB]) as db:
        account = await account_or_404(db, request, acting=True)
        if account.email_verified:
            return redirect(person_path(sub, error="verified"), 303)
        message = await links.verification(db, request.config_dict[SETTINGS], account)
        audit.record(
            db, actor_kind="agent", actor=agent.sub, action="support.resend_verification", account_sub=account.sub, reason=read_reason(form) or None
        )
        after_commit.mail(db, request, [message])
    return redirect(person_path(sub, done="verification_sent"), 303)


async def open_rights_request(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    form = await forms.checked_form(request)
    sub = request.match_info["sub"]
    kind = field(form, "type", 40)
    target = field(form, "target", 80) or "hub"
    details = field(form, "details", MAX_DETAILS + 1).strip()
    if kind not in TYPES:
        return redirect(person_path(sub, error="type"), 303)
    if len(details) > MAX_DETAILS:
        return redirect(person_path(sub, error="details"), 303)
    try:
        details = check_multiline(details)
    except ValueError:
        return redirect(person_path(sub, error="details_text"), 303)
    async with unit(request.config_dict[DB]) as db:
        account = await account_or_404(db, request, acting=True)
        try:
            opened = await rights.open_for_support(
                db, account, agent=agent.sub, type=kind, client_id=None if target == "hub" else target, details=details or None  # type: ignore[arg-type]
            )
        except rights.UnknownTarget:
            return redirect(person_path(sub, error="target"), 303)
        audit.record(
            db,
            actor_kind="agent",
            actor=agent.sub,
            action="support.rights_request",
            account_sub=account.sub,
            reason=read_reason(form) or None,
            detail={"type": kind, "target": target, "request": opened.public_id},
        )
        after_commit.wake(db, request)
    return redirect(person_path(sub, done="rights_opened"), 303)


async def resync(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    form = await forms.checked_form(request)
    sub = request.match_info["sub"]
    client_id = field(form, "client_id", 80)
    async with request.config_dict[DB].begin() as db:
        account = await account_or_404(db, request, acting=True)
        service = await db.scalar(
            select(Service)
            .join(Link, Link.service_id == Service.id)
            .where(Service.client_id == client_id, Link.account_id == account.id, Link.is_active)
        )
        if service is None:
            return redirect(person_path(sub, error="not_linked"), 303)
        if not await status.resync_person(db, service, account.id):
            return redirect(person_path(sub, error="no_channel"), 303)
        audit.record(
            db,
            actor_kind="agent",
            actor=agent.sub,
            action="support.resync",
            account_sub=account.sub,
            reason=read_reason(form) or None,
            detail={"client_id": client_id},
        )
    return redirect(person_path(sub, done="resync_queued"), 303)
