"""The person's rights requests at ``/account/rights``: every request they made (to the hub or to
any service they linked) with its status, due date and history, and a form to open one, which
asks for their password again."""

from __future__ import annotations

import datetime as dt
from typing import Any, get_args

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity import rights
from identity.appkeys import DB
from identity.i18n import _, format_number, lazy_gettext, pgettext_lazy, translate
from identity.db.engine import autocommit
from identity.db.models import Account, Link, Service, utcnow
from identity.db.units import unit
from identity.pages.common import field, render
from identity.pages.sign_in import confirm_password
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect
from schemas.events import RightsType
from schemas.messages import Problem
from schemas.text import check_multiline

PATH = "/account/rights"
SIGN_IN = f"/sign-in?next={PATH}"
HUB = "hub"
MAX_DETAILS = 4000

# What each right is called in the request form (a choice of a select list).
TYPES: dict[str, Any] = {
    "access": lazy_gettext("Access: a copy of the data held about me"),
    "rectification": lazy_gettext("Rectification: correct inaccurate data"),
    "erasure": lazy_gettext("Erasure: delete my data"),
    "restriction": lazy_gettext("Restriction: stop using my data for now"),
    "objection": lazy_gettext("Objection: stop processing my data for a purpose"),
    "portability": lazy_gettext("Portability: my data in a machine-readable form"),
    "consent_withdrawal": lazy_gettext("Consent withdrawal: withdraw consent I gave"),
}
assert set(TYPES) == set(get_args(RightsType))
# The short name of each right, as the heading of a request.
TYPE_NAMES: dict[str, Any] = {
    "access": lazy_gettext("Access"),
    "rectification": lazy_gettext("Rectification"),
    "erasure": lazy_gettext("Erasure"),
    "restriction": lazy_gettext("Restriction"),
    "objection": lazy_gettext("Objection"),
    "portability": lazy_gettext("Portability"),
    "consent_withdrawal": lazy_gettext("Consent withdrawal"),
}
assert set(TYPE_NAMES) == set(TYPES)

STATUS_TEXT: dict[str, Any] = {
    "received": pgettext_lazy("rights request status", "Received"),
    "acknowledged": pgettext_lazy("rights request status", "Acknowledged"),
    "extended": pgettext_lazy("rights request status", "Extended"),
    "completed": pgettext_lazy("rights request status", "Completed"),
    "refused": pgettext_lazy("rights request status", "Refused"),
}
# Who took a step of a request, as the "By" column of its history.
BY_TEXT: dict[str, Any] = {
    "person": pgettext_lazy("who took a step of a rights request", "you"),
    "support": pgettext_lazy("who took a step of a rights request", "support, for you"),
    "hub": "One Sign In",
    "service": None,
}


async def _targets(db: AsyncSession, account_id: int) -> list[tuple[str, str]]:
    """Where the person can send a request: the hub, and every service they ever linked."""
    rows = await db.execute(
        select(Service.client_id, Service.name)
        .join(Link, Link.service_id == Service.id)
        .where(Link.account_id == account_id)
        .order_by(Service.name)
    )
    return [(HUB, _("One Sign In (this hub)"))] + [
        (client_id, name) for client_id, name in rows
    ]


def _shown(view: rights.RequestView, now: dt.datetime) -> dict[str, Any]:
    target = view.service_name or "One Sign In"
    r = view.request
    return {
        "id": r.public_id,
        "type": TYPE_NAMES.get(r.type, r.type),
        "target": target,
        "status": STATUS_TEXT.get(r.status, r.status),
        "open": r.status in rights.OPEN,
        "overdue": view.overdue(now),
        "details": r.details,
        "received_at": r.received_at,
        "due_at": r.due_at,
        "history": [
            {
                "status": STATUS_TEXT.get(e.status, e.status),
                "by": BY_TEXT.get(e.actor_kind) or target,
                "reason": e.reason,
                "at": e.at,
            }
            for e in view.history
        ],
    }


async def _page(
    request: web.Request,
    db: AsyncSession,
    account: Account,
    *,
    status: int = 200,
    **extra: Any,
) -> web.Response:
    now = utcnow()
    views = await rights.for_account(db, account.id)
    context = {
        "requests": [_shown(v, now) for v in views],
        "targets": await _targets(db, account.id),
        "types": TYPES,
        "values": extra.pop("values", {}),
        "errors": extra.pop("errors", {}),
        **extra,
    }
    return render(request, "rights.html", context, status=status)


async def rights_page(request: web.Request) -> web.StreamResponse:
    async with request.config_dict[DB].begin() as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect(SIGN_IN)
        opened = None
        if wanted := request.query.get("opened"):
            opened = next(
                (
                    v
                    for v in await rights.for_account(db, signed_in.account.id)
                    if v.request.public_id == wanted
                ),
                None,
            )
        return await _page(
            request,
            db,
            signed_in.account,
            opened=_shown(opened, utcnow()) if opened else None,
        )


def _read(form: Any) -> tuple[dict[str, str], dict[str, str]]:
    values = {
        "type": field(form, "type", 40),
        "target": field(form, "target", 80) or HUB,
        "details": field(form, "details", MAX_DETAILS + 1).strip(),
    }
    errors = {}
    if values["type"] not in TYPES:
        errors["type"] = _("Choose which right you want to exercise.")
    if len(values["details"]) > MAX_DETAILS:
        errors["details"] = _("Keep the details to %(limit)s characters or fewer.", limit=format_number(MAX_DETAILS))
    else:
        try:
            values["details"] = check_multiline(values["details"])
        except ValueError as exc:
            errors["details"] = exc.words(translate) if isinstance(exc, Problem) else str(exc)
    return values, errors


async def open_from_page(request: web.Request) -> web.StreamResponse:
    form = await csrf.checked_form(request)
    values, errors = _read(form)
    password = field(form, "current_password", 1024)
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect(SIGN_IN, 303)
        if errors:
            return await _page(
                request, db, signed_in.account, status=400, values=values, errors=errors
            )
    # The password is checked with no database connection held (argon2id takes a while).
    confirmed = await confirm_password(request, signed_in, password)
    if confirmed.ended is not None:
        return confirmed.ended
    if not confirmed.ok:
        async with autocommit(request.config_dict[DB]) as db:
            errors = {
                "current_password": _("Your password is not correct. Enter it to confirm the request.")
            }
            return await _page(
                request, db, signed_in.account, status=400, values=values, errors=errors
            )
    client_id = None if values["target"] == HUB else values["target"]
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect(SIGN_IN, 303)
        try:
            opened = await rights.open_request(
                db,
                signed_in.account,
                type=values["type"],  # type: ignore[arg-type]
                client_id=client_id,
                details=values["details"] or None,
                actor=signed_in.account.sub,
            )
        except rights.UnknownTarget:
            errors = {"target": _("Choose One Sign In or one of your linked services.")}
            return await _page(
                request, db, signed_in.account, status=400, values=values, errors=errors
            )
        if client_id is not None:
            after_commit.wake(db, request)
    return redirect(f"{PATH}?opened={opened.public_id}", 303)


def filters() -> dict[str, Any]:
    """Template filters naming a request's right and status in the reader's language."""
    return {
        "right_label": lambda value: TYPE_NAMES.get(value, value),
        "status_label": lambda value: STATUS_TEXT.get(value, value),
    }
