"""What the hub's operators do with rights requests (``onesignin rights``): list them, and
answer the hub's own (those addressed to no service). A service's request is answered by that
service, never by the hub for it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Service, utcnow
from identity.rights import store
from identity.rights.errors import NotFound, RightsError
from identity.rights.store import RequestView, State


class AnsweredByService(RightsError):
    """The request is addressed to a service: only that service moves it on."""

    def __init__(self, client_id: str, *, removed: bool = False) -> None:
        super().__init__(client_id)
        self.client_id = client_id
        #: The service has been removed (its closed requests are kept, naming it).
        self.removed = removed

    @property
    def public(self) -> str:  # type: ignore[override]
        if self.removed:
            return (
                f"this request was addressed to service {self.client_id}, since removed, which closed it; "
                "it is kept as the record of its answer, and the hub's operators answer only the hub's own requests"
            )
        return (
            f"this request is addressed to service {self.client_id}, which answers it as the controller "
            "of its data (POST /api/v1/rights-requests/{id}/status); the hub's operators answer only the "
            "hub's own requests"
        )


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def as_json(view: RequestView, now: dt.datetime | None = None) -> dict[str, Any]:
    r = view.request
    return {
        "id": r.public_id,
        "sub": view.sub,
        "target": view.client_id,
        "target_name": view.service_name or "hub",
        "type": r.type,
        "status": r.status,
        "overdue": view.overdue(now),
        "details": r.details,
        "opened_by": r.opened_by,
        "opened_by_actor": r.opened_by_actor,
        "received_at": _time(r.received_at),
        "due_at": _time(r.due_at),
        "extended_at": _time(r.extended_at),
        "closed_at": _time(r.closed_at),
        "history": [
            {
                "status": e.status,
                "by": e.actor_kind,
                "actor": e.actor,
                "reason": e.reason,
                "at": _time(e.at),
            }
            for e in view.history
        ],
    }


async def listing(
    db: AsyncSession,
    state: State,
    *,
    client_id: str | None = None,
    hub_only: bool = False,
) -> dict[str, Any]:
    now = utcnow()
    views = await store.for_operators(
        db, state, client_id=client_id, hub_only=hub_only, now=now
    )
    return {
        "state": state,
        "count": len(views),
        "requests": [as_json(v, now) for v in views],
    }


async def answer(
    db: AsyncSession, public_id: str, *, status: str, reason: str | None, actor: str
) -> dict[str, Any]:
    """Move one of the hub's own requests on, as its operators."""
    try:
        request = await store.for_hub_one(db, public_id, lock=True)
    except NotFound:
        found = await store.any_one(db, public_id)  # raises NotFound when unknown
        if found.removed_service_client_id is not None:
            raise AnsweredByService(found.removed_service_client_id, removed=True) from None
        client_id = await db.scalar(
            select(Service.client_id).where(Service.id == found.service_id)
        )
        raise AnsweredByService(client_id or "?") from None
    await store.move(
        db, request, status=status, reason=reason, actor_kind="hub", actor=actor
    )
    await db.flush()
    return as_json(await store.view(db, request))
