"""Pushed Authorization Requests (RFC 9126): a service sends its authorization request to the
hub directly, authenticated as at the token endpoint, and the browser carries only a
``request_uri`` that names it. The parameters then never pass through the browser (nothing to
tamper with or leak in a URL), and the request is checked before the person sees anything.

A pushed request is checked exactly as /authorize checks one (authlib's validation: client,
registered redirect URI, response type, scope, S256 PKCE, no request objects), lives
:data:`EXPIRES_IN` seconds, and is used once: /authorize takes it (a ``DELETE … RETURNING``, so
two browsers cannot both use it) and goes on with its parameters alone (section 4). A service
registered with ``--require-par`` may not send an authorization request any other way."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import PushedRequest, Service, utcnow
from identity.oidc.records import db
from identity.tokens import digest, new_secret

__all__ = ["EXPIRES_IN", "PREFIX", "CLIENT_AUTH_PARAMS", "is_pushed", "store", "take"]

PREFIX = "urn:ietf:params:oauth:request_uri:"
#: Seconds a pushed request may wait for the browser (RFC 9126 suggests a short time).
EXPIRES_IN = 60
#: Parameters that authenticate the service at the endpoint, not part of its request.
CLIENT_AUTH_PARAMS = frozenset({"client_secret", "client_assertion", "client_assertion_type"})


def is_pushed(request_uri: str | None) -> bool:
    return bool(request_uri) and request_uri.startswith(PREFIX)


def store(service_id: int, params: list[tuple[str, str]], now: dt.datetime | None = None) -> str:
    """Keep a validated request (inside :meth:`Provider.run`); returns its request_uri."""
    secret = new_secret()
    now = now or utcnow()
    db().add(
        PushedRequest(
            request_hash=digest(secret),
            service_id=service_id,
            params=[[k, v] for k, v in params],
            expires_at=now + dt.timedelta(seconds=EXPIRES_IN),
        )
    )
    return PREFIX + secret


async def take(session: AsyncSession, request_uri: str, client_id: str | None) -> list[tuple[str, str]] | None:
    """The pushed request's parameters, removed so that it serves once; None when it is
    unknown, expired, used, or was pushed by another service than ``client_id``."""
    if not is_pushed(request_uri) or not client_id:
        return None
    service_id = select(Service.id).where(Service.client_id == client_id).scalar_subquery()
    taken = await session.execute(
        delete(PushedRequest)
        .where(
            PushedRequest.request_hash == digest(request_uri[len(PREFIX) :]),
            PushedRequest.service_id == service_id,
            PushedRequest.expires_at > utcnow(),
        )
        .returning(PushedRequest.params)
    )
    row: Any = taken.first()
    return None if row is None else [(k, v) for k, v in row.params]
