"""Shared Signals (OpenID SSF 1.0) for member services: the transmitter's metadata at
``/.well-known/ssf-configuration``, the stream management endpoints under ``/api/v1/ssf/``
(create, read, replace, update and delete the service's one stream; its status; a verification
event) and RFC 8936 polling. Each is called with the service's own client-credentials token;
a service sees and changes only its own stream. The rules are in ``identity.ssf``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from identity.api.bearer import NO_STORE, Refused, caller, problem
from identity.api.spec import operation
from identity.appkeys import CIPHER, DB, PROVIDER, SETTINGS
from identity.db.models import utcnow
from identity.errors import storable
from identity.notices import wake
from identity.ssf import emit, events, poll, sets, streams
from identity.ssf.streams import StreamError
from schemas.account import problems
from schemas.ssf import (
    PollRequest,
    PollResponse,
    StreamConfigurationIn,
    StreamConfigurations,
    StreamStatus,
    StreamStatusUpdate,
    VerificationRequest,
)

MAX_BODY = 64 * 1024
#: How often a waiting poll looks again.
POLL_STEP = 0.5


async def configuration(request: web.Request) -> web.Response:
    """SSF 1.0 section 7.1: the transmitter's metadata."""
    issuer = request.config_dict[SETTINGS].issuer
    return web.json_response(
        {
            "spec_version": "1_0",
            "issuer": issuer,
            "jwks_uri": f"{issuer}/jwks",
            "delivery_methods_supported": [streams.PUSH, streams.POLL],
            "configuration_endpoint": f"{issuer}/api/v1/ssf/stream",
            "status_endpoint": f"{issuer}/api/v1/ssf/status",
            "verification_endpoint": f"{issuer}/api/v1/ssf/verify",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
        },
        headers={"Cache-Control": "public, max-age=3600"},
    )


async def _body(request: web.Request, documented: type[BaseModel]) -> dict[str, Any]:
    """The JSON object sent, once it holds what the ``documented`` body allows (each field of
    the right type; fields the hub does not know are left for the handler to ignore)."""
    if request.content_type != "application/json":
        raise StreamError(415, "Send a JSON object (Content-Type: application/json).")
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise StreamError(413, f"The body must be at most {MAX_BODY} bytes.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StreamError(400, "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise StreamError(400, "The body must be a JSON object.")
    try:
        documented.model_validate(body)
    except ValidationError as exc:
        found = "; ".join(f"{p.field}: {p.message}" for p in problems(exc)[:5])
        raise StreamError(400, f"Some fields are not as documented ({found}).") from None
    return body


def _refused(error: StreamError) -> web.Response:
    code = {400: "invalid_request", 404: "not_found", 409: "conflict", 413: "request_too_large", 415: "unsupported_media_type", 429: "too_many_requests"}
    return problem(error.status, code.get(error.status, "invalid_request"), error.message)


def _stream_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise StreamError(400, "stream_id must be the stream's id.")
    if not storable(value):
        raise StreamError(404, "No such stream.")  # no stream has such an id
    return value


def _config(request: web.Request, stream: Any, client_id: str) -> dict[str, Any]:
    return streams.configuration(stream, issuer=request.config_dict[SETTINGS].issuer, client_id=client_id)


@operation(
    "Create the service's Shared Signals stream",
    tag="ssf",
    auth="service",
    body=StreamConfigurationIn,
    responses={201: StreamConfigurations, 400: None, 409: None, 413: None, 415: None},
)
async def create_stream(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.1.1. One stream per service (409 when it has one). ``delivery.method``
    push (urn:ietf:rfc:8935, with ``endpoint_url`` and an optional ``authorization_header``) or
    poll (urn:ietf:rfc:8936: the answer's ``delivery.endpoint_url`` is where to poll)."""
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        try:
            stream = await streams.create(db, request.config_dict[CIPHER], who.client.id, await _body(request, StreamConfigurationIn))
        except StreamError as error:
            return _refused(error)
        answer = _config(request, stream, who.client.client_id)
    return web.json_response(answer, status=201, headers=NO_STORE)


@operation(
    "Read the service's Shared Signals stream",
    tag="ssf",
    auth="service",
    responses={200: StreamConfigurations, 400: None, 404: None},
    query={"stream_id": ("The stream; without it, the list of the service's streams (none or one).", False)},
)
async def read_stream(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.1.2: with ``stream_id`` the stream (404 if it is not this service's),
    without it a list."""
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        try:
            if "stream_id" in request.query:
                stream = await streams.of_service(db, who.client.id, _stream_id(request.query["stream_id"]))
                return web.json_response(_config(request, stream, who.client.client_id), headers=NO_STORE)
            try:
                found = [await streams.of_service(db, who.client.id)]
            except StreamError:
                found = []
        except StreamError as error:
            return _refused(error)
        return web.json_response([_config(request, s, who.client.client_id) for s in found], headers=NO_STORE)


async def _change(request: web.Request, *, replace: bool) -> web.StreamResponse:
    cipher = request.config_dict[CIPHER]
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        try:
            body = await _body(request, StreamConfigurationIn)
            stream = await streams.of_service(db, who.client.id, _stream_id(body.get("stream_id")), lock=True)
            fields = {k: v for k, v in body.items() if k not in streams.READ_ONLY}
            want = streams.wanted(fields, None if replace else streams.current(cipher, stream))
            await streams.change(db, cipher, stream, want)
        except StreamError as error:
            return _refused(error)
        answer = _config(request, stream, who.client.client_id)
    return web.json_response(answer, headers=NO_STORE)


@operation(
    "Update the service's Shared Signals stream",
    tag="ssf",
    auth="service",
    body=StreamConfigurationIn,
    responses={200: StreamConfigurations, 400: None, 404: None, 413: None, 415: None},
)
async def update_stream(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.1.3: the fields present change, the others stay."""
    return await _change(request, replace=False)


@operation(
    "Replace the service's Shared Signals stream",
    tag="ssf",
    auth="service",
    body=StreamConfigurationIn,
    responses={200: StreamConfigurations, 400: None, 404: None, 413: None, 415: None},
)
async def replace_stream(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.1.4: the stream becomes what is sent (fields left out are emptied;
    without a ``delivery`` it is polled)."""
    return await _change(request, replace=True)


@operation(
    "Delete the service's Shared Signals stream",
    tag="ssf",
    auth="service",
    responses={204: None, 400: None, 404: None},
    query={"stream_id": ("The stream.", True)},
)
async def delete_stream(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.1.5: the stream and every SET still waiting on it go."""
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        try:
            stream = await streams.of_service(db, who.client.id, _stream_id(request.query.get("stream_id")), lock=True)
        except StreamError as error:
            return _refused(error)
        await streams.remove(db, stream)
    return web.Response(status=204, headers=NO_STORE)


def _status(stream: Any) -> dict[str, Any]:
    out = {"stream_id": stream.stream_id, "status": stream.status}
    if stream.status_reason:
        out["reason"] = stream.status_reason
    return out


@operation(
    "The stream's status",
    tag="ssf",
    auth="service",
    responses={200: StreamStatus, 400: None, 404: None},
    query={"stream_id": ("The stream.", True)},
)
async def get_status(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.2.1: ``enabled``, ``paused`` or ``disabled``."""
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        try:
            stream = await streams.of_service(db, who.client.id, _stream_id(request.query.get("stream_id")))
        except StreamError as error:
            return _refused(error)
        return web.json_response(_status(stream), headers=NO_STORE)


@operation(
    "Enable, pause or disable the stream",
    tag="ssf",
    auth="service",
    body=StreamStatusUpdate,
    responses={200: StreamStatus, 400: None, 404: None, 413: None, 415: None},
)
async def set_status(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.2.2. Paused: SETs are kept and sent once it is enabled again.
    Disabled: waiting SETs are dropped and none are made until it is enabled."""
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        try:
            body = await _body(request, StreamStatusUpdate)
            stream = await streams.of_service(db, who.client.id, _stream_id(body.get("stream_id")), lock=True)
            await streams.set_status(db, stream, body.get("status"), body.get("reason"))
        except StreamError as error:
            return _refused(error)
        answer = _status(stream)
    wake(request.config_dict)
    return web.json_response(answer, headers=NO_STORE)


@operation(
    "Ask for a verification event",
    tag="ssf",
    auth="service",
    body=VerificationRequest,
    responses={204: None, 400: None, 404: None, 413: None, 415: None, 429: None},
)
async def verify(request: web.Request) -> web.StreamResponse:
    """SSF 1.0 section 8.1.4.2: a verification SET carrying ``state`` is sent (pushed or
    polled) on the stream; at most one per ``min_verification_interval`` seconds (429)."""
    async with request.config_dict[DB].begin() as db:
        try:
            who = await caller(request, db, person=False)
        except Refused as refused:
            return refused.response
        try:
            body = await _body(request, VerificationRequest)
            stream = await streams.of_service(db, who.client.id, _stream_id(body.get("stream_id")), lock=True)
            state = body.get("state")
            if state is not None and (not isinstance(state, str) or len(state) > 200 or not storable(state)):
                raise StreamError(400, "state must be a string of at most 200 characters.")
            now = utcnow()
            last = stream.last_verification_at
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=now.tzinfo)
            if last is not None and (now - last).total_seconds() < streams.MIN_VERIFICATION_INTERVAL:
                raise StreamError(429, f"At most one verification event per {streams.MIN_VERIFICATION_INTERVAL} seconds.")
            if stream.status == "disabled":
                raise StreamError(400, "The stream is disabled.")
        except StreamError as error:
            return _refused(error)
        stream.last_verification_at = now
        await emit.verification(db, stream, who.client.client_id, events.verification(state), now=now)
    wake(request.config_dict)
    return web.Response(status=204, headers=NO_STORE)


@operation(
    "Poll the stream's Security Event Tokens",
    tag="ssf",
    auth="service",
    body=PollRequest,
    responses={200: PollResponse, 400: None, 404: None, 413: None, 415: None},
)
async def poll_sets(request: web.Request) -> web.StreamResponse:
    """RFC 8936: acknowledge (``ack``) and report errors (``setErrs``) for SETs received, and
    receive up to ``maxEvents`` more (``sets``: jti to the signed SET; ``moreAvailable``). A SET
    not acknowledged comes again. With ``returnImmediately`` false the answer waits a few
    seconds for a SET when none is waiting. Only a poll stream is polled (404 otherwise)."""
    settings = request.config_dict[SETTINGS]
    keys = request.config_dict[PROVIDER].keys
    stream_id = request.match_info["id"]
    deadline = asyncio.get_running_loop().time() + settings.ssf_poll_wait
    first = True
    while True:
        async with request.config_dict[DB].begin() as db:
            if first:
                try:
                    who = await caller(request, db, person=False)
                except Refused as refused:
                    return refused.response
            try:
                stream = await streams.of_service(db, who.client.id, _stream_id(stream_id))
                if stream.delivery_method != streams.POLL:
                    raise StreamError(404, "This stream is not polled.")
                if first:
                    asked = poll.request(await _body(request, PollRequest))
                    await poll.answer(db, stream, asked.acks, asked.errors)
            except StreamError as error:
                return _refused(error)
            first = False
            found, more = await poll.waiting(db, stream, asked.max_events)
        if found or asked.return_immediately or asked.max_events == 0 or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(POLL_STEP)
    body = PollResponse(sets={jti: sets.sign(keys, settings.issuer, stored) for jti, stored in found}, moreAvailable=more)
    return web.json_response(body.model_dump(), headers=NO_STORE)
