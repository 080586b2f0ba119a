"""Rights requests in the database: opening one (by the person, or by a support agent on their
behalf), moving it on, and reading them back with their history. Data functions take the
caller's session and never commit; a request for a service queues its ``rights.requested``
notice in the same transaction, so the request and its delivery exist together or not at all."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity import notices
from identity.db.models import (
    Account,
    Link,
    RightsRequest,
    RightsRequestEvent,
    Service,
    utcnow,
)
from identity.rights import deadlines, lifecycle
from identity.rights.errors import (
    ExtensionTooLate,
    InvalidTransition,
    NotFound,
    ReasonRequired,
    UnknownTarget,
)
from schemas.events import RightsRequestData, RightsRequested, RightsType

State = Literal["open", "overdue", "all"]
OpenedBy = Literal["person", "support"]
#: Who moved a request: the person, the service it is addressed to, a support agent, or the
#: hub's operators (for the hub's own requests).
ActorKind = Literal["person", "service", "support", "hub"]

_PUBLIC_ID = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
_CHUNK = 500


@dataclass
class RequestView:
    """A request with who it concerns, where it is addressed, and its history (oldest first)."""

    request: RightsRequest
    sub: str
    #: The service it is addressed to (None: the hub itself), present or removed.
    client_id: str | None
    service_name: str | None
    history: list[RightsRequestEvent] = field(default_factory=list)

    def overdue(self, now: dt.datetime | None = None) -> bool:
        return is_overdue(self.request, now)


def is_overdue(request: RightsRequest, now: dt.datetime | None = None) -> bool:
    return request.status in lifecycle.OPEN and request.due_at < (now or utcnow())


async def open_request(
    db: AsyncSession,
    account: Account,
    *,
    type: RightsType,
    client_id: str | None,
    details: str | None,
    opened_by: OpenedBy = "person",
    actor: str | None = None,
    via_service_id: int | None = None,
    now: dt.datetime | None = None,
) -> RightsRequest:
    """Open a request addressed to the hub (``client_id`` None) or to a service the person has
    linked (in any link status: an unlinked or cancelled service still controls what it holds).
    A service the person never linked is refused exactly like an unknown one. ``via_service_id``
    is the service whose person token opened it (the API), None at the hub itself."""
    service = None
    if client_id is not None:
        service = await db.scalar(
            select(Service)
            .join(Link, Link.service_id == Service.id)
            .where(Service.client_id == client_id, Link.account_id == account.id)
        )
        if service is None:
            raise UnknownTarget(f"no link from account {account.id} to {client_id!r}")
    now = now or utcnow()
    details = (details or "").strip() or None
    request = RightsRequest(
        public_id=str(uuid.uuid4()),
        account_id=account.id,
        service_id=service.id if service else None,
        type=type,
        details=details,
        status="received",
        opened_by=opened_by,
        opened_by_actor=actor,
        opened_via_service_id=via_service_id,
        received_at=now,
        due_at=deadlines.due_at(now),
        updated_at=now,
    )
    db.add(request)
    await db.flush()
    db.add(
        RightsRequestEvent(
            request_id=request.id,
            status="received",
            actor_kind=opened_by,
            actor=actor,
            at=now,
        )
    )
    if service is not None:
        notice = RightsRequested(
            id=notices.new_notice_id(),
            timestamp=notices.timestamp(now),
            data=RightsRequestData(
                id=request.public_id,
                sub=account.sub,
                type=type,
                details=details,
                received_at=request.received_at,
                due_at=request.due_at,
                opened_by=opened_by,
            ),
        )
        notices.add(db, service, account.id, account.sub, notice)
    return request


async def open_for_support(
    db: AsyncSession,
    account: Account,
    *,
    agent: str,
    type: RightsType,
    client_id: str | None,
    details: str | None,
    now: dt.datetime | None = None,
) -> RightsRequest:
    """A support agent opens a request on the person's behalf (for the support console)."""
    return await open_request(
        db,
        account,
        type=type,
        client_id=client_id,
        details=details,
        opened_by="support",
        actor=agent,
        now=now,
    )


async def move(
    db: AsyncSession,
    request: RightsRequest,
    *,
    status: str,
    reason: str | None,
    actor_kind: ActorKind,
    actor: str | None,
    now: dt.datetime | None = None,
) -> RightsRequestEvent:
    """Move ``request`` to ``status`` and record the step. Extending sets the deadline to three
    months after receipt, and is refused (:class:`ExtensionTooLate`) once the request is past its
    due date; completing or refusing closes the request."""
    if not lifecycle.allowed(request.status, status):
        raise InvalidTransition(request.status, status)
    reason = (reason or "").strip() or None
    if status in lifecycle.NEEDS_REASON and reason is None:
        raise ReasonRequired(status)
    now = now or utcnow()
    if status == "extended" and request.due_at <= now:
        # The extension is decided within the first month (GDPR Art. 12(3)), not once missed.
        raise ExtensionTooLate(request.status, status)
    request.status = status
    request.updated_at = now
    if status == "extended":
        request.extended_at = now
        request.due_at = deadlines.extended_due_at(request.received_at)
    if status in lifecycle.CLOSED:
        request.closed_at = now
    event = RightsRequestEvent(
        request_id=request.id,
        status=status,
        reason=reason,
        actor_kind=actor_kind,
        actor=actor,
        at=now,
    )
    db.add(event)
    return event


# -- Finding one request ---------------------------------------------------------------------


async def _one(
    db: AsyncSession, public_id: str, *where: Any, lock: bool
) -> RightsRequest:
    if not _PUBLIC_ID.fullmatch(public_id or ""):
        raise NotFound("malformed id")
    query = select(RightsRequest).where(RightsRequest.public_id == public_id, *where)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    found = await db.scalar(query)
    if found is None:
        raise NotFound(public_id)
    return found


async def for_service_one(
    db: AsyncSession, public_id: str, service_id: int, *, lock: bool = False
) -> RightsRequest:
    """A request addressed to this service; any other (another service's, the hub's, unknown)
    raises the same :class:`NotFound`."""
    return await _one(db, public_id, RightsRequest.service_id == service_id, lock=lock)


async def for_hub_one(
    db: AsyncSession, public_id: str, *, lock: bool = False
) -> RightsRequest:
    """A request addressed to the hub itself."""
    return await _one(db, public_id, RightsRequest.to_hub, lock=lock)


async def any_one(db: AsyncSession, public_id: str) -> RightsRequest:
    return await _one(db, public_id, lock=False)


# -- Lists with history ----------------------------------------------------------------------


def _state(state: State, now: dt.datetime) -> list[Any]:
    if state == "open":
        return [RightsRequest.status.in_(lifecycle.OPEN)]
    if state == "overdue":
        return [RightsRequest.status.in_(lifecycle.OPEN), RightsRequest.due_at < now]
    return []


async def _views(db: AsyncSession, *where: Any, order_by: Any) -> list[RequestView]:
    rows = (
        await db.execute(
            select(
                RightsRequest,
                Account.sub,
                func.coalesce(Service.client_id, RightsRequest.removed_service_client_id),
                func.coalesce(Service.name, RightsRequest.removed_service_name),
            )
            .join(Account, Account.id == RightsRequest.account_id)
            .outerjoin(Service, Service.id == RightsRequest.service_id)
            .where(*where)
            .order_by(*order_by, RightsRequest.id)
        )
    ).all()
    views = [
        RequestView(request, sub, client_id, name)
        for request, sub, client_id, name in rows
    ]
    by_id = {view.request.id: view for view in views}
    ids = list(by_id)
    for start in range(0, len(ids), _CHUNK):
        events = await db.scalars(
            select(RightsRequestEvent)
            .where(RightsRequestEvent.request_id.in_(ids[start : start + _CHUNK]))
            .order_by(RightsRequestEvent.at, RightsRequestEvent.id)
        )
        for event in events:
            by_id[event.request_id].history.append(event)
    return views


def _of_account(account_id: int, visible_to: int | None) -> list[Any]:
    where = [RightsRequest.account_id == account_id]
    if visible_to is not None:
        where.append(
            (RightsRequest.service_id == visible_to)
            | (
                RightsRequest.to_hub
                & (RightsRequest.opened_via_service_id == visible_to)
            )
        )
    return where


async def for_account(
    db: AsyncSession, account_id: int, *, visible_to: int | None = None
) -> list[RequestView]:
    """The person's requests, newest first. With ``visible_to`` (a service id), only those
    addressed to that service and those to the hub that were opened through it: a service never
    learns of the person's other services, nor reads what they asked the hub elsewhere."""
    return await _views(
        db,
        *_of_account(account_id, visible_to),
        order_by=[RightsRequest.received_at.desc()],
    )


async def view_for_account(
    db: AsyncSession, account_id: int, public_id: str, *, visible_to: int | None = None
) -> RequestView:
    """One of the person's requests (within ``visible_to`` as in :func:`for_account`)."""
    if not _PUBLIC_ID.fullmatch(public_id or ""):
        raise NotFound("malformed id")
    where = [*_of_account(account_id, visible_to), RightsRequest.public_id == public_id]
    found = await _views(db, *where, order_by=[])
    if not found:
        raise NotFound(public_id)
    return found[0]


async def for_service(
    db: AsyncSession,
    service_id: int,
    state: State = "open",
    now: dt.datetime | None = None,
) -> list[RequestView]:
    """One service's requests, most urgent (earliest due) first."""
    where = [RightsRequest.service_id == service_id, *_state(state, now or utcnow())]
    return await _views(db, *where, order_by=[RightsRequest.due_at])


async def view(db: AsyncSession, request: RightsRequest) -> RequestView:
    return (await _views(db, RightsRequest.id == request.id, order_by=[]))[0]


async def for_operators(
    db: AsyncSession,
    state: State = "open",
    *,
    client_id: str | None = None,
    hub_only: bool = False,
    now: dt.datetime | None = None,
) -> list[RequestView]:
    """Requests for the hub's operators: every target, the hub's own only, or one service's."""
    where = _state(state, now or utcnow())
    if hub_only:
        where.append(RightsRequest.to_hub)
    elif client_id is not None:
        service_id = await db.scalar(
            select(Service.id).where(Service.client_id == client_id)
        )
        if service_id is not None:
            where.append(RightsRequest.service_id == service_id)
        elif await db.scalar(select(RightsRequest.id).where(RightsRequest.removed_service_client_id == client_id).limit(1)):
            where.append(RightsRequest.removed_service_client_id == client_id)  # a removed service's, kept
        else:
            raise UnknownTarget(f"no service {client_id!r}")
    return await _views(db, *where, order_by=[RightsRequest.due_at])


async def overdue_by_target(
    db: AsyncSession, now: dt.datetime | None = None
) -> dict[str, int]:
    """Overdue requests per target: ``"hub"`` and every registered service's client_id (zero
    included, so each series exists)."""
    counts = {"hub": 0} | {
        cid: 0 for cid in await db.scalars(select(Service.client_id))
    }
    # A removed service's requests are all closed, so never overdue; named by it all the same.
    target = func.coalesce(Service.client_id, RightsRequest.removed_service_client_id)
    rows = await db.execute(
        select(target, func.count())
        .select_from(RightsRequest)
        .outerjoin(Service, Service.id == RightsRequest.service_id)
        .where(*_state("overdue", now or utcnow()))
        .group_by(target)
    )
    for client_id, count in rows:
        counts[client_id or "hub"] = count
    return counts
