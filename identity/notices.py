"""Notices: one-off events for one member service (``schemas.events.ServiceNotice``: an unlink,
a rights request, a restriction). They are written in the caller's transaction, one row per
channel the service has (its webhook, its topic), and the sync worker delivers them at least
once with the same message id on every retry. A service with neither channel gets no rows; it
can still read what concerns it through the API.

A service with a SCIM server gets, on that channel, only what SCIM can say (:func:`add_scim`):
``deactivate`` its User when the person unlinks it, the service cancels its account, or the
account is restricted; ``delete`` it when the hub account is erased. The body is that intent
(``{"op", "externalId"}``), not the event; the sync worker carries it out (``sync.scim``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Notice, Service, utcnow
from identity.logs import REQUEST_ID
from schemas.events import ServiceNotice, service_notice


def new_notice_id() -> str:
    return str(uuid.uuid4())


def timestamp(now: dt.datetime | None = None) -> dt.datetime:
    """A notice's ``timestamp``: now, to the millisecond."""
    now = now or utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def channels(service: Service) -> list[str]:
    """Where ``service`` takes notices. A disabled webhook still gets its rows: the sync worker
    holds them until the webhook is enabled again, so an unlink or a rights request still
    reaches the service once its endpoint is fixed."""
    out = []
    if service.webhook_url:
        out.append("webhook")
    if service.topic_enabled:
        out.append("topic")
    return out


#: The notices that deactivate the person's User at a service's SCIM server.
SCIM_DEACTIVATES = frozenset({"link.revoked", "account.restricted"})


def add_scim(db: AsyncSession, service: Service, account_id: int | None, sub: str, op: str, *, now: dt.datetime | None = None) -> None:
    """Queue ``op`` (``deactivate`` or ``delete``) of the person's User at ``service``'s SCIM
    server, if it has one. Nothing but the ``sub`` is in it."""
    if not service.scim_base_url:
        return
    now = now or utcnow()
    db.add(
        Notice(
            service_id=service.id,
            account_id=account_id,
            channel="scim",
            event_type=f"scim.{op}",
            message_id=new_notice_id(),
            key=sub,
            body=json.dumps({"op": op, "externalId": sub}, separators=(",", ":")),
            created_at=now,
            next_attempt_at=now,
        )
    )


def add(db: AsyncSession, service: Service, account_id: int | None, key: str, notice: ServiceNotice) -> None:
    """Queue ``notice`` for ``service``. ``key`` is the person's ``sub`` (the Kafka key, so one
    person's messages stay in order). An unlink or a restriction also deactivates the person's
    User at the service's SCIM server."""
    body = json.dumps(service_notice.dump_python(notice, mode="json"), separators=(",", ":"), ensure_ascii=False)
    now = utcnow()
    for channel in channels(service):
        db.add(
            Notice(
                service_id=service.id,
                account_id=account_id,
                channel=channel,
                event_type=notice.type,
                message_id=notice.id,
                key=key,
                body=body,
                request_id=REQUEST_ID.get(),
                created_at=now,
                next_attempt_at=now,
            )
        )
    if notice.type in SCIM_DEACTIVATES:
        add_scim(db, service, account_id, key, "deactivate", now=now)


#: Set by a sync worker running in this process: waking it sends a new notice at once instead of
#: at its next poll (a quarter of a second later).
WAKE = web.AppKey("notices_wake", asyncio.Event)


def wake(config: Mapping[Any, Any]) -> None:
    """Call after committing notices (``request.config_dict``): an in-process worker sends them now."""
    event = config.get(WAKE)
    if event is not None:
        event.set()


async def counts(db: AsyncSession, service_id: int) -> dict[str, int]:
    """A service's notices waiting (``pending``) and given up (``dead``)."""
    n = Notice.__table__.c
    found = dict(
        (
            await db.execute(
                select(n.state, func.count())
                .where(n.service_id == service_id, n.state.in_(("pending", "dead")))
                .group_by(n.state)
            )
        ).all()
    )
    return {"pending": found.get("pending", 0), "dead": found.get("dead", 0)}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


async def dead(
    db: AsyncSession, *, client_id: str | None = None, limit: int = 100
) -> list[dict[str, object]]:
    """Notices that gave up, oldest first (what they are about, not their bodies)."""
    q = (
        select(Notice, Service.client_id)
        .join(Service, Service.id == Notice.service_id)
        .where(Notice.state == "dead")
        .order_by(Notice.id)
        .limit(limit)
    )
    if client_id:
        q = q.where(Service.client_id == client_id)
    return [
        {
            "id": n.id,
            "client_id": cid,
            "sub": n.key,
            "type": n.event_type,
            "channel": n.channel,
            "message_id": n.message_id,
            "attempts": n.attempts,
            "failing_since": _iso(n.failing_since),
            "last_error": n.last_error,
        }
        for n, cid in await db.execute(q)
    ]


async def revive(
    db: AsyncSession, *, client_id: str | None = None, ids: list[int] | None = None
) -> int:
    """Queue dead notices again (the same event, with the same id). Returns how many."""
    q = update(Notice).where(Notice.state == "dead")
    if client_id:
        q = q.where(
            Notice.service_id.in_(
                select(Service.id).where(Service.client_id == client_id)
            )
        )
    if ids:
        q = q.where(Notice.id.in_(ids))
    result = await db.execute(
        q.values(
            state="pending", attempts=0, failing_since=None, next_attempt_at=utcnow()
        )
    )
    return int(result.rowcount or 0)
