"""The link API for member services, with the service's own client-credentials token:
``GET /api/v1/links/{sub}`` (the person's link to the calling service) and ``POST
/api/v1/links/{sub}/cancel`` (the service reports it cancelled its own account for that person).

A service only ever sees its own links: a person who is unknown, and a person not linked to the
calling service, get the very same 404."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from identity.accounts import link_lifecycle
from identity.api.bearer import NO_STORE, Refused, caller, problem
from identity.api.spec import operation
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.db.engine import autocommit
from identity.db.models import Link, Service
from identity.db.units import unit
from identity.web import after_commit
from schemas.api import LinkResponse


def _not_linked() -> web.Response:
    # Not linked and unknown look the same: a service learns nothing of other people.
    return problem(
        404, "not_found", "No person with that sub is linked to this service."
    )


def _body(link: Link, sub: str) -> web.Response:
    body = LinkResponse(
        sub=sub,
        status=link.status,
        scope=link.scope,
        created_at=link.created_at,
        updated_at=link.updated_at,
        ended_at=link.ended_at,
    )
    return web.json_response(body.model_dump(mode="json"), headers=NO_STORE)


@operation(
    "A person's link to the calling service",
    tag="links",
    auth="service",
    responses={200: LinkResponse, 404: None},
)
async def get_link(request: web.Request) -> web.StreamResponse:
    """The link's status (``active``, ``revoked`` by the person, ``cancelled`` by the service),
    the scopes granted and when it was made, changed and ended. 404 when the person is not
    linked to the calling service, exactly as when the ``sub`` is unknown."""
    sub = request.match_info["sub"]
    async with autocommit(request.config_dict[DB]) as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        found = await link_lifecycle.link_of(db, who.client.id, sub)
    if found is None:
        return _not_linked()
    return _body(found[0], sub)


@operation(
    "Report that the service cancelled its own account for a person",
    tag="links",
    auth="service",
    responses={200: LinkResponse, 404: None},
)
async def cancel_link(request: web.Request) -> web.StreamResponse:
    """The link becomes ``cancelled``: nothing more is delivered to the service about the person
    (what was queued is dropped), the person's tokens and consent for the service are revoked,
    and the service's sessions for them are logged out (back-channel logout). The person sees it
    on their account page. Calling it again changes nothing. Signing in to the service again
    links it anew."""
    sub = request.match_info["sub"]
    settings = request.config_dict[SETTINGS]
    async with unit(request.config_dict[DB]) as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        service = await db.scalar(select(Service).where(Service.id == who.client.id))
        assert service is not None
        done = await link_lifecycle.cancel(
            db, request.config_dict[PROVIDER].keys, settings.issuer, service, sub
        )
        if done is not None:
            after_commit.logout(db, request, done[1])
    if done is None:
        return _not_linked()
    link, _ = done
    return _body(link, sub)
