"""A person's linked profile in the console (``/support/people/{sub}``) and revealing its masked
fields. Every look writes its audit record (``support.view``, ``support.reveal``) in the
transaction that read the data. Only columns meant for agents are read: never a password hash,
a TOTP secret, or a service's client or webhook secret."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.support.words import _, lazy_gettext
from identity import rights
from identity.accounts import factors
from identity.accounts.store import find_by_sub
from identity.appkeys import DB
from identity.db.models import (
    Account,
    AccountChange,
    DeadLetter,
    Delivery,
    Link,
    LinkStatus,
    SecondFactorRemoval,
    Service,
    SignInEvent,
    StaffMember,
    utcnow,
)
from identity.deliveries import channels_of, open_dead_letter
from identity.pages.common import field
from identity.pages.rights import STATUS_TEXT, TYPE_NAMES, TYPES
from identity.support import audit, forms, masking, trail
from identity.support.render import render
from identity.support.session import AGENT, Agent
from identity.web.responses import redirect

MAX_REASON = 500
#: An agent's reason for a reveal must say something; a supervisor's may be short.
AGENT_REASON_MIN = 10

#: Messages after an action (``?done=``) and refusals (``?error=``): fixed texts, so nothing
#: typed into a URL is ever shown as if the console said it.
DONE = {
    "saved": lazy_gettext("The details are saved and are being sent to every linked service."),
    "nochange": lazy_gettext("Nothing was changed: the values given are the ones already held."),
    "verification_sent": "A new confirmation link was sent to the person's address.",
    "rights_opened": lazy_gettext("The rights request is open; the person and its controller can follow it."),
    "resync_queued": "A fresh copy of the profile is queued for that service.",
    "reset_sent": "A password reset link was mailed to the person; nobody at support sees it.",
    "removal_requested": lazy_gettext("The removal is asked for: a supervisor approves or refuses it. The person was told."),
}
ERRORS = {
    "reason": lazy_gettext("Give a reason: it is recorded with your name."),
    "reason_short": lazy_gettext(
        "Say why in a few words (at least %(min)s characters): it is recorded with your name.", min=AGENT_REASON_MIN
    ),
    "field": lazy_gettext("Choose which masked field to reveal."),
    "verified": lazy_gettext("The address is already confirmed: no link was sent."),
    "type": lazy_gettext("Choose which right the person wants to exercise."),
    "details": lazy_gettext("Keep the details to 4000 characters or fewer."),
    "details_text": lazy_gettext(
        "Remove the control or invisible formatting characters from the details: they can disguise what the text says."
    ),
    "target": lazy_gettext("The person never linked that service: send the request to the hub or a service they linked."),
    "not_linked": lazy_gettext("The person has no active link to that service, so it gets nothing about them."),
    "no_channel": lazy_gettext("That service has no webhook, topic or SCIM server to resync to."),
    "no_factor": lazy_gettext("The person has no second factor to remove."),
    "removal_pending": "A removal of this person's second factor is already waiting for a supervisor.",
}


def person_path(sub: str, **query: str) -> str:
    return f"/support/people/{quote(sub, safe='')}" + (f"?{urlencode(query)}" if query else "")


async def account_or_404(db: AsyncSession, request: web.Request, *, acting: bool = False) -> Account:
    """The account named in the path. Least privilege: a staff member's account is looked
    after by supervisors only, and nobody acts on their own account here (they use their
    account page, like everyone else)."""
    sub = request.match_info["sub"]
    account = await find_by_sub(db, sub) if len(sub) <= 64 else None
    if account is None:
        raise web.HTTPNotFound(text=_("No account has that sub."))
    agent = request[AGENT]
    if not agent.is_supervisor and await db.scalar(select(StaffMember.id).where(StaffMember.account_id == account.id)) is not None:
        raise web.HTTPForbidden(text=_("Staff accounts are looked after by supervisors."))
    if acting and account.id == agent.account_id:
        raise web.HTTPForbidden(text=_("Change your own account on your account page at the hub, not in the console."))
    return account


def reason_problem(reason: str, *, minimum: int | None = None) -> str | None:
    """Why ``reason`` is not enough, as an ``ERRORS`` key; None when it is."""
    if not reason:
        return "reason"
    if minimum is not None and len(reason) < minimum:
        return "reason_short"
    return None


def read_reason(form: Any) -> str:
    return " ".join(field(form, "reason", MAX_REASON).split())


def details_of(account: Account, revealed: set[str]) -> dict[str, Any]:
    return {
        "sub": account.sub,
        "email": account.email,
        "email_verified": account.email_verified,
        "given_name": account.given_name,
        "family_name": account.family_name,
        "name": account.name,
        "locale": account.locale,
        "zoneinfo": account.zoneinfo,
        "status": account.status,
        "restricted_at": account.restricted_at,
        "delete_after": account.delete_after,
        "version": account.version,
        "created_at": account.created_at,
        "updated_at": account.updated_at,
        "masked": masking.shown(account, revealed),
        "revealed": revealed,
    }


def edit_values(account: Account) -> dict[str, str]:
    """The edit form's starting values: the unmasked fields only (masked ones start empty)."""
    return {f: getattr(account, f) or "" for f in ("given_name", "family_name", "locale", "zoneinfo")}


async def _links(db: AsyncSession, account: Account) -> list[dict[str, Any]]:
    rows = (
        await db.execute(
            select(
                Link.status,
                Link.scope,
                Link.created_at,
                Link.updated_at,
                Link.ended_at,
                Link.service_id,
                Service.client_id,
                Service.name,
                Service.cancellation_url,
                Service.cancellation_instructions,
                Service.webhook_url,
                Service.topic_enabled,
                Service.scim_base_url,
            )
            .join(Service, Service.id == Link.service_id)
            .where(Link.account_id == account.id)
            .order_by(Link.created_at, Link.id)
        )
    ).all()
    deliveries: dict[int, list[dict[str, Any]]] = {}
    for d in (await db.scalars(select(Delivery).where(Delivery.account_id == account.id).order_by(Delivery.channel))).all():
        deliveries.setdefault(d.service_id, []).append(
            {
                "channel": d.channel,
                "delivered_version": d.delivered_version,
                "wanted_version": d.wanted_version,
                "pending": d.state == "active" and d.wanted_version > d.delivered_version,
                "state": d.state,
                "attempts": d.attempts,
                "failing_since": d.failing_since,
                "last_error": d.last_error,
                "delivered_at": d.delivered_at,
                "next_attempt_at": d.next_attempt_at,
            }
        )
    dead: dict[int, list[DeadLetter]] = {}
    for letter in (
        await db.scalars(
            select(DeadLetter).where(DeadLetter.account_id == account.id, open_dead_letter()).order_by(DeadLetter.id)
        )
    ).all():
        dead.setdefault(letter.service_id, []).append(letter)
    out = []
    for r in rows:
        channels = list(channels_of(r.webhook_url, r.topic_enabled, r.scim_base_url))
        out.append(
            {
                "client_id": r.client_id,
                "name": r.name,
                "status": r.status,
                "scopes": r.scope.split(),
                "created_at": r.created_at,
                "updated_at": r.updated_at,
                "ended_at": r.ended_at,
                "cancellation_url": r.cancellation_url,
                "cancellation_instructions": r.cancellation_instructions,
                "channels": channels,
                "deliveries": deliveries.get(r.service_id, []),
                "dead_letters": dead.get(r.service_id, []),
                "can_resync": r.status == LinkStatus.ACTIVE and bool(channels),
            }
        )
    return out


async def _rights(db: AsyncSession, account: Account) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "id": v.request.public_id,
            "type": TYPE_NAMES.get(v.request.type, v.request.type),
            "target": v.service_name or _("One Sign In (the hub)"),
            "status": STATUS_TEXT.get(v.request.status, v.request.status),
            "overdue": v.overdue(now),
            "opened_by": v.request.opened_by,
            "received_at": v.request.received_at,
            "due_at": v.request.due_at,
            "closed_at": v.request.closed_at,
        }
        for v in await rights.for_account(db, account.id)
    ]


async def profile_context(db: AsyncSession, agent: Agent, account: Account, revealed: set[str]) -> dict[str, Any]:
    """Everything the profile page shows."""
    links = await _links(db, account)
    changes = (
        await db.scalars(
            select(AccountChange).where(AccountChange.account_id == account.id).order_by(AccountChange.version.desc(), AccountChange.id.desc()).limit(20)
        )
    ).all()
    sign_ins = (
        await db.scalars(select(SignInEvent).where(SignInEvent.account_id == account.id).order_by(SignInEvent.at.desc(), SignInEvent.id.desc()).limit(10))
    ).all()
    records = await trail.records(db, account_sub=account.sub, limit=20) if agent.is_supervisor else None
    return {
        "title": account.name or account.email,
        "person": details_of(account, revealed),
        "links": links,
        "targets": [("hub", _("One Sign In (the hub)"))] + [(link["client_id"], link["name"]) for link in links],
        "types": TYPES,
        "rights": await _rights(db, account),
        "changes": changes,
        "sign_ins": sign_ins,
        "masked_fields": masking.MASKED,
        "values": edit_values(account),
        "audit": records,
        "emails": await trail.agent_emails(db, records) if records else {},
        "reason_min": None if agent.is_supervisor else AGENT_REASON_MIN,
        "has_second_factor": await factors.enrolled(db, account.id),
        "removal_pending": await db.scalar(
            select(SecondFactorRemoval.id).where(SecondFactorRemoval.account_id == account.id, SecondFactorRemoval.status == "pending")
        )
        is not None,
    }


async def person_page(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    async with request.config_dict[DB].begin() as db:
        account = await account_or_404(db, request)
        context = await profile_context(db, agent, account, set())
        audit.record(db, actor_kind="agent", actor=agent.sub, action="support.view", account_sub=account.sub)
    context["done"] = DONE.get(request.query.get("done", ""))
    context["error"] = ERRORS.get(request.query.get("error", ""))
    return render(request, "person.html", context)


async def reveal(request: web.Request) -> web.StreamResponse:
    """Show masked values in this response only (nothing is stored but the audit record). An
    agent reveals one field at a time, with a reason of a few words; a supervisor may reveal
    every masked field at once, and a short reason will do."""
    agent = request[AGENT]
    form = await forms.checked_form(request)
    sub = request.match_info["sub"]
    wanted = field(form, "field", 40)
    if wanted == "all" and agent.is_supervisor:
        fields = list(masking.MASKED)
    elif wanted in masking.MASKED:
        fields = [wanted]
    else:
        return redirect(person_path(sub, error="field"), 303)
    reason = read_reason(form)
    problem = reason_problem(reason, minimum=None if agent.is_supervisor else AGENT_REASON_MIN)
    if problem:
        return redirect(person_path(sub, error=problem), 303)
    async with request.config_dict[DB].begin() as db:
        account = await account_or_404(db, request)
        context = await profile_context(db, agent, account, set(fields))
        audit.record(
            db, actor_kind="agent", actor=agent.sub, action="support.reveal", account_sub=account.sub, reason=reason, detail={"fields": fields}
        )
    context["done"] = _(
        "Revealed for this page only: %(fields)s. Reloading the page masks it again.", fields=", ".join(str(masking.MASKED[f]) for f in fields)
    )
    return render(request, "person.html", context)
