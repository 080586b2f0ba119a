"""The sync API for member services, with the service's own client-credentials token:
``GET /api/v1/sync/status`` (its backlog, endpoint health, and with ``?sub=`` one linked
person's delivered version) and ``POST /api/v1/sync/resync`` (replay every linked person's
current profile, paced)."""

from __future__ import annotations

import math

from aiohttp import web
from sqlalchemy import select

from identity import deliveries as status
from identity.api.bearer import NO_STORE, Refused, caller, problem
from identity.api.spec import operation
from identity.appkeys import DB, SETTINGS
from identity.db.engine import autocommit
from identity.db.models import Service, utcnow
from schemas.api import ResyncResponse, SyncStatusResponse


@operation(
    "The calling service's sync state",
    tag="sync",
    auth="service",
    responses={200: SyncStatusResponse, 400: None, 404: None},
    query={"sub": ("One linked person's sub: their delivered version against their current one.", False)},
)
async def sync_status(request: web.Request) -> web.StreamResponse:
    """Backlog per channel (webhook, topic, SCIM), the webhook's and the SCIM server's health and
    the dead letters; with ``sub``, one linked
    person's state (404 when that person is not linked to the service, exactly as when unknown)."""
    sub = request.query.get("sub")
    if sub is not None and not (0 < len(sub) <= 64):
        return problem(400, "invalid_request", "sub must be 1 to 64 characters.")
    async with autocommit(request.config_dict[DB]) as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        service = await db.scalar(select(Service).where(Service.id == who.client.id))
        assert service is not None
        body = await status.service_status(db, service, sub=sub, topic_prefix=request.config_dict[SETTINGS].kafka_topic_prefix)
    if body is None:
        # Not linked and unknown look the same: a service learns nothing of other people.
        return problem(404, "not_found", "No person with that sub is linked to this service.")
    return web.json_response(body, headers=NO_STORE)


@operation(
    "Replay every linked person's current profile",
    tag="sync",
    auth="service",
    responses={202: ResyncResponse, 409: None, 429: None},
    headers={429: {"Retry-After": "Seconds until the snapshots queued earlier have been sent."}},
)
async def resync(request: web.Request) -> web.StreamResponse:
    """Queues a snapshot of each linked person's current profile to the calling service, paced
    at ``rate_per_second``. One resync at a time: while snapshots queued earlier (the previous
    resync's, or a new link's in flight) are still being sent, the answer is 429 with
    ``Retry-After``."""
    rate = request.config_dict[SETTINGS].sync_resync_rate
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        service = await db.scalar(select(Service).where(Service.id == who.client.id))
        assert service is not None
        if not (service.webhook_url or service.topic_enabled or service.scim_base_url):
            return problem(409, "no_delivery_channel", "This service has no webhook, topic or SCIM server to deliver to.")
        try:
            queued = await status.resync(db, service, rate=rate, started_by="service")
        except status.ResyncInProgress as busy:
            wait = max(1, math.ceil((busy.until - utcnow()).total_seconds()))
            response = problem(
                429,
                "resync_in_progress",
                "Snapshots queued earlier for this service (a previous resync, or new links) are "
                f"still being sent; try again in about {wait} s.",
            )
            response.headers["Retry-After"] = str(wait)
            return response
    return web.json_response(ResyncResponse(queued=queued, rate_per_second=rate).model_dump(), status=202, headers=NO_STORE)
