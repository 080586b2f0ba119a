"""Response hardening and the last line of error handling: no stack trace reaches a client."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy.exc import DataError

from identity import logs
from identity.accounts.hashing import HashQueueFull
from identity.appkeys import HUB_METRICS, SETTINGS
from identity.errors import BadInput
from identity.i18n import _
from identity.logs import REQUEST_ID
from identity.metrics import UNMATCHED

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_PREFIXES = ("/token", "/userinfo", "/revoke", "/introspect", "/jwks", "/.well-known/", "/api/", "/schemas/", "/asyncapi.json", "/metrics")

#: Scripts only from the hub's own files (the passkey ceremony, ``pages/static/passkeys.js``),
#: never inline.
PAGE_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'"


#: An incoming X-Request-Id is used only when it looks like an id (a proxy's or a client's).
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
access_log = logging.getLogger("onesignin.access")


class _RequestIds:
    """New request ids: this process's random prefix and a counter (unique without a call to the
    system's random source per request; ids need not be unguessable). A forked child gets a
    prefix of its own."""

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"  # 32 hex digits, as a UUID's


new_request_id = _RequestIds()


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: a request id for every request (a well-formed incoming ``X-Request-Id``, else
    a new one), in every log line written while answering it and in the answer's
    ``X-Request-Id``; then one access log line (method, path without the query string, status,
    duration, id: never a token, a cookie or a query string), and the request counted in the
    hub's metrics by its route's template."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if given and _REQUEST_ID.fullmatch(given) else new_request_id()
    token = REQUEST_ID.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        seconds = time.perf_counter() - started
        logs.access(access_log, (request.method, request.path, status, round(seconds * 1000, 1)))
        # The hub's own app (this middleware's): not request.config_dict, a new view per access.
        metrics = request.app.get(HUB_METRICS)
        if metrics is not None:
            metrics.request(route_of(request), request.method, status, seconds)
        REQUEST_ID.reset(token)


def route_of(request: web.Request) -> str:
    """The template of the route that answered (``/i/{uid}/login``), never the raw path: one
    series per route, whatever the ids in the path; ``unmatched`` for a path no route has."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def is_api(request: web.Request) -> bool:
    return request.path.startswith(API_PREFIXES)


def _error_page(request: web.Request, status: int, title: str, message: str) -> web.StreamResponse:
    message = str(message)
    if is_api(request):
        code = {404: "not_found", 408: "request_timeout", 413: "request_too_large", 415: "unsupported_media_type"}.get(status, "invalid_request")
        code = "temporarily_unavailable" if status == 503 else "server_error" if status >= 500 else code
        return web.json_response({"error": code, "error_description": message}, status=status)
    return aiohttp_jinja2.render_template(
        "message.html", request, {"title": title, "message": message}, status=status
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status in (403, 404, 405, 413) and exc.text and exc.text.startswith(f"{exc.status}:"):
            titles = {
                403: (_("Not allowed"), _("This form has expired or was not sent from this site. Go back, reload the page and try again.")),
                404: (_("Not found"), _("There is nothing at this address.")),
                405: (_("Not allowed"), _("This address does not accept that kind of request.")),
                413: (_("Too large"), _("The request is too large.")),
            }
            title, message = titles[exc.status]
            response = _error_page(request, exc.status, title, message)
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except HashQueueFull as busy:
        response = _error_page(request, 503, _("Busy"), busy.public)
        response.headers["Retry-After"] = str(busy.retry_after)
        return response
    except (UnicodeDecodeError, DataError, BadInput):
        # Undecodable bytes, or text the database cannot store (a NUL, say): the client's fault.
        return _error_page(request, 400, _("Bad request"), _("The request contains characters that cannot be accepted."))
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error (incident %s) on %s %s", incident, request.method, request.path)
        return _error_page(
            request, 500, _("Something went wrong"), _("Something went wrong on our side. Please try again. (Incident %(incident)s)", incident=incident)
        )


#: Methods whose body a handler may read.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def whole_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the request's whole body before the handler runs, within
    ``ONESIGNIN_REQUEST_BODY_TIMEOUT`` seconds (the application's ``client_max_size`` bounds its
    size).

    A handler opens its unit of work only after reading what it needs from the client; reading
    the body here makes that hold for every route, whatever the handler does: ``request.read()``,
    ``request.post()`` and ``request.json()`` then answer from memory, so no handler can wait on
    a slow or stalled client while it holds a database connection. Multipart bodies are refused:
    the hub takes no uploads, and its forms are URL-encoded."""
    if request.method not in BODY_METHODS or not request.body_exists:
        return await handler(request)
    if request.content_type == "multipart/form-data":
        return _error_page(
            request, 415, _("Not accepted"), _("Send forms as application/x-www-form-urlencoded and API bodies as JSON.")
        )
    if (request.content_length or 0) > request.client_max_size:
        return _too_large(request)
    try:
        if request.content.is_eof():
            await request.read()  # all here already (the common case): nothing to wait for
        else:
            async with asyncio.timeout(request.config_dict[SETTINGS].request_body_timeout):
                await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request)
    except TimeoutError:
        response = _error_page(request, 408, _("Too slow"), _("The request's body did not arrive in time. Please try again."))
        response.force_close()
        return response
    return await handler(request)


def _too_large(request: web.Request) -> web.StreamResponse:
    response = _error_page(request, 413, _("Too large"), _("The request is too large."))
    response.force_close()  # the rest of the body is not read
    return response


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The hub's headers on every answer, a raised one too (a redirect raised as
    ``web.HTTPFound``, a 404 page): its name and not aiohttp's and Python's versions, HSTS behind
    https, no MIME sniffing, no referrer; and on pages a CSP, no framing and no caching."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _harden(request, exc.headers)
        raise
    _harden(request, response.headers)
    return response


def _harden(request: web.Request, headers: MutableMapping[str, str]) -> None:
    headers["Server"] = "OneSignIn"
    if request.app[SETTINGS].secure_cookies:  # the hub's own app: this middleware's
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if headers.get("Content-Type", "").partition(";")[0].strip().lower() == "text/html":
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Cache-Control", "no-store")
