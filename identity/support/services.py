"""Member services as the console shows them to admins and service owners: which services a
staff member may see, each one's settings and the age of its secrets, its sync state now, its
recent deliveries and notices (people named by ``sub`` alone), and which staff own which
services. Read-only except :func:`set_owned`; takes the caller's session.

A service owner sees only the services linked to them in ``staff_services``; an admin sees every
member service. A service nobody may see is answered as one that does not exist."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, false, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity import deliveries, notices
from identity.i18n import format_day, format_moment
from identity.db.models import (
    ACTIVE,
    Account,
    Delivery,
    Link,
    Notice,
    Service,
    StaffMember,
    StaffService,
    utcnow,
)
from identity.support.session import Agent
from identity.support.staff import StaffError
from identity.support.words import _, ngettext

RECENT = 50


def _visible(agent: Agent) -> Any:
    query = select(Service).where(Service.first_party.is_(False))
    if agent.is_admin:
        return query
    if agent.role != "service_owner":
        return query.where(false())
    return query.join(StaffService, StaffService.service_id == Service.id).where(StaffService.staff_id == agent.staff_id)


async def visible(db: AsyncSession, agent: Agent) -> list[Service]:
    return list((await db.scalars(_visible(agent).order_by(Service.name))).all())


async def find(db: AsyncSession, agent: Agent, client_id: str) -> Service | None:
    """The service ``client_id`` if ``agent`` may see it; None whether it is missing or not theirs."""
    return await db.scalar(_visible(agent).where(Service.client_id == client_id[:64]))


def age(since: dt.datetime | None, now: dt.datetime) -> str | None:
    """A secret's age, readably, in the console's language (``3 days``, ``5 hours``, ``12 minutes``)."""
    if since is None:
        return None
    seconds = max(0, int((now - since).total_seconds()))
    if seconds >= 86400:
        return ngettext("%(num)d day", "%(num)d days", seconds // 86400)
    if seconds >= 3600:
        return ngettext("%(num)d hour", "%(num)d hours", seconds // 3600)
    if seconds >= 60:
        return ngettext("%(num)d minute", "%(num)d minutes", seconds // 60)
    return _("under a minute")


def webhook_state(service: Service) -> str | None:
    """``healthy``, ``failing``, ``quarantined`` or ``disabled`` (the pages word them), or None
    without a webhook."""
    if not service.webhook_url:
        return None
    if service.webhook_disabled_at:
        return "disabled"
    if service.webhook_quarantined_at:
        return "quarantined"
    return "failing" if service.webhook_failing_since else "healthy"


@dataclass(frozen=True)
class Summary:
    """One line of the services list."""

    service: Service
    webhook: str | None
    backlog: int
    dead: int
    linked: int
    secret_age: str | None
    webhook_secret_age: str | None


async def summaries(db: AsyncSession, services: list[Service], now: dt.datetime | None = None) -> list[Summary]:
    now = now or utcnow()
    ids = [s.id for s in services]
    if not ids:
        return []
    d, n = Delivery.__table__.c, Notice.__table__.c
    backlog: dict[int, int] = dict(
        (await db.execute(select(d.service_id, func.count()).where(d.service_id.in_(ids), d.state == ACTIVE, d.wanted_version > d.delivered_version).group_by(d.service_id))).all()
    )
    for sid, count in await db.execute(select(n.service_id, func.count()).where(n.service_id.in_(ids), n.state == "pending").group_by(n.service_id)):
        backlog[sid] = backlog.get(sid, 0) + count
    dead: dict[int, int] = dict(
        (await db.execute(select(d.service_id, func.count()).where(d.service_id.in_(ids), d.state == "dead").group_by(d.service_id))).all()
    )
    for sid, count in await db.execute(select(n.service_id, func.count()).where(n.service_id.in_(ids), n.state == "dead").group_by(n.service_id)):
        dead[sid] = dead.get(sid, 0) + count
    linked = dict((await db.execute(select(Link.service_id, func.count()).where(Link.service_id.in_(ids), Link.is_active).group_by(Link.service_id))).all())
    return [
        Summary(
            s, webhook_state(s), backlog.get(s.id, 0), dead.get(s.id, 0), linked.get(s.id, 0),
            age(s.secret_set_at, now) if s.secret_hash else None,
            age(s.webhook_secret_set_at, now) if s.webhook_secret else None,
        )
        for s in services
    ]


def settings_of(service: Service) -> list[tuple[str, str]]:
    """A service's registration as an admin reads it (never a secret or its digest), in the
    console's language (protocol values such as ``client_secret_basic`` as they are)."""
    # Translators: a service setting's value when it has none (no webhook, no back-channel logout).
    none = _("none")
    yes, no = _("yes"), _("no")
    previous = (
        _("works until %(moment)s", moment=format_moment(service.previous_secret_expires_at))
        if service.previous_secret_hash and service.previous_secret_expires_at and service.previous_secret_expires_at > utcnow()
        else none
    )
    return [
        # Translators: a service's status: disabled by an operator or enabled.
        (_("Status"), _("disabled") if service.disabled_at else _("enabled")),
        (_("Client authentication"), service.token_endpoint_auth_method),
        (_("Application type"), service.application_type),
        (_("Redirect URIs"), ", ".join(service.redirect_uris)),
        (_("Scopes"), service.scope),
        (_("Webhook"), service.webhook_url or none),
        (_("Service topic"), yes if service.topic_enabled else no),
        (_("Back-channel logout"), service.backchannel_logout_uri or none),
        (_("Pushed requests required"), yes if service.require_par else no),
        (_("DPoP required"), yes if service.require_dpop else no),
        (_("Rotated-out secret"), previous),
        (_("Registered"), format_day(service.created_at)),
    ]


async def recent_deliveries(db: AsyncSession, service: Service, limit: int = RECENT) -> list[dict[str, Any]]:
    """The service's most recently sent or due deliveries: the person's ``sub`` and the row's
    state, never anything else of the person."""
    rows = await db.execute(
        select(Delivery, Account.sub)
        .join(Account, Account.id == Delivery.account_id)
        .where(Delivery.service_id == service.id)
        .order_by(Delivery.next_attempt_at.desc())
        .limit(limit)
    )
    return [
        {
            "sub": sub,
            "channel": r.channel,
            "status": "dead" if r.state == "dead" else "pending" if r.wanted_version > r.delivered_version else "delivered",
            "version": max(r.delivered_version, r.wanted_version),
            "attempts": r.attempts,
            "answer": r.last_status,
            "delay_ms": r.last_delay_ms,
            "at": r.delivered_at if r.wanted_version <= r.delivered_version else r.next_attempt_at,
            "error": r.last_error,
        }
        for r, sub in rows
    ]


async def recent_notices(db: AsyncSession, service: Service, limit: int = RECENT) -> list[dict[str, Any]]:
    """The service's newest notices: the event, the person's ``sub`` (the notice's key), state."""
    rows = await db.scalars(select(Notice).where(Notice.service_id == service.id).order_by(Notice.id.desc()).limit(limit))
    return [
        {
            "sub": n.key,
            "type": n.event_type,
            "channel": n.channel,
            "status": n.state,
            "attempts": n.attempts,
            "answer": n.last_status,
            "delay_ms": n.last_delay_ms,
            "at": n.delivered_at or n.created_at,
            "error": n.last_error,
        }
        for n in rows
    ]


async def dead_letters(db: AsyncSession, service: Service) -> list[dict[str, Any]]:
    """The service's open dead letters: deliveries (``kind`` delivery) and notices."""
    letters = [{"kind": "delivery", **letter} for letter in await deliveries.dead_letters(db, client_id=service.client_id)]
    return letters + [{"kind": "notice", **letter} for letter in await notices.dead(db, client_id=service.client_id)]


async def redeliver(db: AsyncSession, service: Service, *, kind: str | None = None, letter_id: int | None = None) -> int:
    """Queue the service's dead letters again: one (``kind`` and ``letter_id``) or all of them.
    Ids are looked up within this service only."""
    if letter_id is not None and kind == "delivery":
        return await deliveries.redeliver(db, client_id=service.client_id, ids=[letter_id])
    if letter_id is not None and kind == "notice":
        return await notices.revive(db, client_id=service.client_id, ids=[letter_id])
    return await deliveries.redeliver(db, client_id=service.client_id) + await notices.revive(db, client_id=service.client_id)


async def owned(db: AsyncSession) -> dict[int, list[str]]:
    """Each staff member's services (staff id to client_ids)."""
    found: dict[int, list[str]] = {}
    for staff_id, client_id in await db.execute(
        select(StaffService.staff_id, Service.client_id).join(Service, Service.id == StaffService.service_id).order_by(Service.client_id)
    ):
        found.setdefault(staff_id, []).append(client_id)
    return found


async def set_owned(db: AsyncSession, *, sub: str, client_ids: list[str], granted_by: str) -> list[str]:
    """Make ``client_ids`` the services of the staff member ``sub`` (replacing what they had);
    unknown client_ids are refused. Returns the client_ids now theirs."""
    staff_id = await db.scalar(select(StaffMember.id).join(Account, Account.id == StaffMember.account_id).where(Account.sub == sub).with_for_update(of=StaffMember))
    if staff_id is None:
        raise StaffError(_("no staff member with that sub"))
    wanted = sorted(set(client_ids))
    found = dict((await db.execute(select(Service.client_id, Service.id).where(Service.client_id.in_(wanted), Service.first_party.is_(False)))).all())
    if missing := [c for c in wanted if c not in found]:
        raise StaffError(_("no such service: %(client_ids)s", client_ids=", ".join(missing)))
    await db.execute(delete(StaffService).where(StaffService.staff_id == staff_id))
    now = utcnow()
    for client_id in wanted:
        db.add(StaffService(staff_id=staff_id, service_id=found[client_id], granted_at=now, granted_by=granted_by))
    await db.flush()
    return wanted
