"""The rights-request API.

For the person, through a service holding their access token: ``POST`` and ``GET
/api/v1/me/rights-requests`` (and one request by id). Through that token a service only ever
deals with requests to itself and requests to the hub opened through it: opening one for
another service, or seeing one, would tell it which other services the person uses, and the
person's other requests to the hub (with their free text) are none of its business. The person sees and opens every request on
their account page at the hub.

For the service, with its own client-credentials token: ``GET /api/v1/rights-requests`` (its
own requests) and ``POST /api/v1/rights-requests/{id}/status`` (move one on). Any request not
addressed to the calling service answers 404, exactly like an unknown id."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TypeVar, cast

from aiohttp import web
from pydantic import BaseModel, ValidationError

from identity import rights
from identity.api.bearer import NO_STORE, Caller, Refused, caller, problem
from identity.api.spec import operation
from identity.appkeys import DB
from identity.db.engine import autocommit
from identity.db.models import Account, utcnow
from identity.db.units import unit
from identity.web import after_commit
from schemas.account import problems
from schemas.rights import (
    RightsRequestCreate,
    RightsRequestList,
    RightsRequestStep,
    RightsRequestView,
    RightsStatusChange,
    ServiceRightsRequest,
    ServiceRightsRequestList,
)

log = logging.getLogger(__name__)

#: The application's own limit (client_max_size): a longest valid body, escaped, fits well within it.
MAX_BODY = 64 * 1024
STATES = ("open", "overdue", "all")
M = TypeVar("M", bound=BaseModel)


# -- Shared steps --------------------------------------------------------------------------------


async def _authenticate(request: web.Request, *, person: bool) -> Caller:
    """Who is asking, checked before anything else (a read; no transaction held meanwhile)."""
    async with autocommit(request.config_dict[DB]) as db:
        return await caller(request, db, person=person)


async def _body(request: web.Request, model: type[M]) -> M:
    """The JSON body as ``model``; raises :class:`Refused` with 415, 413, 400 or 422."""
    if request.content_type != "application/json":
        raise Refused(
            problem(
                415,
                "unsupported_media_type",
                "Send a JSON object (Content-Type: application/json).",
            )
        )
    if (request.content_length or 0) > MAX_BODY:
        raise Refused(
            problem(
                413, "request_too_large", f"The body must be at most {MAX_BODY} bytes."
            )
        )
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise Refused(
            problem(
                413, "request_too_large", f"The body must be at most {MAX_BODY} bytes."
            )
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(
            problem(400, "invalid_json", "The body is not valid JSON.")
        ) from None
    if not isinstance(body, dict):
        raise Refused(
            problem(400, "invalid_request", "The body must be a JSON object.")
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        found = [p.model_dump() for p in problems(exc)]
        raise Refused(
            problem(
                422,
                "invalid_request",
                "Some fields are not valid; see problems.",
                problems=found,
            )
        ) from None


def _unknown_target() -> web.Response:
    return problem(
        422,
        "invalid_request",
        "Some fields are not valid; see problems.",
        problems=[{"field": "service", "message": rights.UnknownTarget.public}],
    )


def _steps(view: rights.RequestView) -> list[RightsRequestStep]:
    return [
        RightsRequestStep(status=e.status, by=e.actor_kind, reason=e.reason, at=e.at)  # type: ignore[arg-type]
        for e in view.history
    ]


def person_view(view: rights.RequestView, now: dt.datetime) -> RightsRequestView:
    r = view.request
    return RightsRequestView(
        id=r.public_id,
        type=r.type,  # type: ignore[arg-type]
        service=view.client_id,
        status=r.status,  # type: ignore[arg-type]
        details=r.details,
        opened_by=r.opened_by,  # type: ignore[arg-type]
        received_at=r.received_at,
        due_at=r.due_at,
        extended_at=r.extended_at,
        closed_at=r.closed_at,
        overdue=view.overdue(now),
        history=_steps(view),
    )


def service_view(view: rights.RequestView, now: dt.datetime) -> ServiceRightsRequest:
    return ServiceRightsRequest(sub=view.sub, **person_view(view, now).model_dump())


def _json(body: BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        text=body.model_dump_json(),
        status=status,
        content_type="application/json",
        headers={**NO_STORE, **headers},
    )


def _location(public_id: str) -> str:
    return f"/api/v1/me/rights-requests/{public_id}"


# -- The person's requests -------------------------------------------------------------------


@operation(
    "Open a rights request",
    tag="rights",
    auth="person",
    scopes=("openid",),
    body=RightsRequestCreate,
    responses={201: RightsRequestView},
    headers={201: {"Location": "The new request."}},
)
async def open_mine(request: web.Request) -> web.StreamResponse:
    """The person exercises a data-subject right with the hub (``service`` null) or with the
    calling service (its own client_id). A request to a service is sent to it as a
    ``rights.requested`` event. It is due one month after receipt."""
    try:
        who = await _authenticate(request, person=True)
        body = await _body(request, RightsRequestCreate)
    except Refused as refused:
        return refused.response
    if body.service is not None and body.service != who.client.client_id:
        return _unknown_target()  # another service: not this caller's to know of
    now = utcnow()
    async with unit(request.config_dict[DB]) as db:
        account = await db.get(Account, cast(Account, who.account).id)
        if account is None:
            return problem(
                401, "invalid_token", "The access token is not valid for this person."
            )
        try:
            opened = await rights.open_request(
                db,
                account,
                type=body.type,
                client_id=body.service,
                details=body.details,
                actor=account.sub,
                via_service_id=who.client.id,
                now=now,
            )
        except rights.UnknownTarget as exc:
            log.info(
                "rights request through %s refused: %s",
                who.client.client_id,
                exc.detail,
            )
            return _unknown_target()
        view = await rights.view(db, opened)
        if body.service is not None:
            after_commit.wake(db, request)
    return _json(person_view(view, now), 201, Location=_location(opened.public_id))


@operation(
    "The person's rights requests",
    tag="rights",
    auth="person",
    scopes=("openid",),
    responses={200: RightsRequestList},
)
async def list_mine(request: web.Request) -> web.StreamResponse:
    """Every request the person addressed to the calling service, and those to the hub opened
    through the calling service, newest first, with its status, due date and history."""
    now = utcnow()
    async with request.config_dict[DB]() as db:
        try:
            who = await caller(request, db, person=True)
        except Refused as refused:
            return refused.response
        views = await rights.for_account(
            db, cast(Account, who.account).id, visible_to=who.client.id
        )
    return _json(RightsRequestList(requests=[person_view(v, now) for v in views]))


@operation(
    "One of the person's rights requests",
    tag="rights",
    auth="person",
    scopes=("openid",),
    responses={200: RightsRequestView, 404: None},
)
async def get_mine(request: web.Request) -> web.StreamResponse:
    """One request the person addressed to the calling service, or to the hub through it."""
    now = utcnow()
    async with request.config_dict[DB]() as db:
        try:
            who = await caller(request, db, person=True)
        except Refused as refused:
            return refused.response
        try:
            view = await rights.view_for_account(
                db,
                cast(Account, who.account).id,
                request.match_info["id"],
                visible_to=who.client.id,
            )
        except rights.NotFound:
            return problem(404, "not_found", rights.NotFound.public)
    return _json(person_view(view, now))


# -- The service's requests ------------------------------------------------------------------


@operation(
    "The calling service's rights requests",
    tag="rights",
    auth="service",
    responses={200: ServiceRightsRequestList, 400: None},
    query={"state": ("open (default), overdue (open and past due), or all.", False)},
)
async def list_for_service(request: web.Request) -> web.StreamResponse:
    """Requests addressed to the calling service, earliest due first, with whose they are and
    their history. Overdue ones are flagged."""
    state = request.query.get("state", "open")
    if state not in STATES:
        return problem(
            400,
            "invalid_request",
            "state must be open, overdue or all.",
            problems=[{"field": "state", "message": "must be open, overdue or all"}],
        )
    now = utcnow()
    async with request.config_dict[DB]() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        views = await rights.for_service(db, who.client.id, state, now)  # type: ignore[arg-type]
    return _json(
        ServiceRightsRequestList(requests=[service_view(v, now) for v in views])
    )


@operation(
    "Move a rights request on",
    tag="rights",
    auth="service",
    body=RightsStatusChange,
    responses={200: ServiceRightsRequest, 404: None, 409: None},
)
async def change_status(request: web.Request) -> web.StreamResponse:
    """The service, as the controller, acknowledges, extends (once, by two months, with a
    reason), completes or refuses (with a reason) a request addressed to it. The person sees
    each step. 409 when the request cannot move that way (it is closed, or already extended, or
    it is already overdue and asked to be extended: the extension is decided within the first
    month, GDPR Art. 12(3))."""
    try:
        who = await _authenticate(request, person=False)
        body = await _body(request, RightsStatusChange)
    except Refused as refused:
        return refused.response
    now = utcnow()
    async with request.config_dict[DB].begin() as db:
        try:
            found = await rights.for_service_one(
                db, request.match_info["id"], who.client.id, lock=True
            )
            await rights.move(
                db,
                found,
                status=body.status,
                reason=body.reason,
                actor_kind="service",
                actor=who.client.client_id,
                now=now,
            )
        except rights.NotFound as exc:
            log.info(
                "rights status by %s refused: not found (%s)",
                who.client.client_id,
                exc.detail,
            )
            return problem(404, "not_found", rights.NotFound.public)
        except rights.InvalidTransition as exc:
            log.info(
                "rights status by %s refused: %s", who.client.client_id, exc.detail
            )
            return problem(
                409, "invalid_transition", exc.public, current_status=exc.current
            )
        except rights.ReasonRequired:
            # Not reached: the body model already requires the reason.
            return _reason_required(body.status)
        await db.flush()
        view = await rights.view(db, found)
    return _json(service_view(view, now))


def _reason_required(status: str) -> web.Response:
    return problem(
        422,
        "invalid_request",
        "Some fields are not valid; see problems.",
        problems=[
            {
                "field": "reason",
                "message": f"a reason is required to mark a request {status}",
            }
        ],
    )
