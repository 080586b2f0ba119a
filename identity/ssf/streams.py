"""A member service's one Shared Signals stream (SSF 1.0 section 8.1): what a receiver may set,
the rules it is checked against, and the row.

The receiver sets ``delivery`` (``method`` push, RFC 8935, with its ``endpoint_url`` and
optionally an ``authorization_header`` the hub sends with each SET; or poll, RFC 8936, whose
``endpoint_url`` the hub gives), ``events_requested`` and ``description``. The hub answers with
``events_supported`` and ``events_delivered`` (requested and supported). The authorization
header is a secret of the receiver's: sealed at rest and never read back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Notice, SsfStream, utcnow
from identity.errors import storable
from identity.sealing import KeyCipher
from identity.ssf import events

PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
METHODS = (PUSH, POLL)
STATUSES = ("enabled", "paused", "disabled")
#: Receivers' fields the hub ignores when sent back (SSF 1.0 section 8.1.1.2: transmitter-supplied).
READ_ONLY = {"stream_id", "iss", "aud", "events_supported", "events_delivered", "min_verification_interval"}
#: At most one verification event per this many seconds (``min_verification_interval``).
MIN_VERIFICATION_INTERVAL = 5


class StreamError(Exception):
    """A stream request the hub refuses: ``status`` (400, 404, 409) and a public ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Wanted:
    """What a receiver asked for, checked."""

    method: str
    endpoint_url: str | None
    authorization_header: str | None
    events_requested: list[str]
    description: str | None


def _text(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or not storable(value):
        raise StreamError(400, f"{name} must be a string of at most {limit} characters.")
    return value


def wanted(body: dict[str, Any], current: Wanted | None = None) -> Wanted:
    """Check a stream's configuration as sent (a creation, a replacement, or with ``current`` an
    update of the fields present)."""
    # Without a delivery, a new stream is polled (SSF 1.0 section 8.1.1: the transmitter chooses).
    delivery = body.get("delivery", {} if current else {"method": POLL})
    if not isinstance(delivery, dict):
        raise StreamError(400, "delivery must be an object.")
    method = delivery.get("method", current.method if current and not delivery else None)
    if method not in METHODS:
        raise StreamError(400, f"delivery.method must be {PUSH} (push) or {POLL} (poll).")
    endpoint_url = current.endpoint_url if current and not delivery else None
    authorization = current.authorization_header if current and not delivery else None
    if method == PUSH:
        endpoint_url = _text(delivery.get("endpoint_url", endpoint_url), "delivery.endpoint_url", 2000)
        parts = urlsplit(endpoint_url or "")
        # As a webhook's URL (``identity.admin.check_uri``): https, or http to a loopback address.
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.hostname or parts.fragment or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise StreamError(400, "delivery.endpoint_url must be an https URL (http only to a loopback address) for push delivery.")
        authorization = _text(delivery.get("authorization_header", authorization), "delivery.authorization_header", 4000)
        if authorization is not None and not all(" " <= c <= "~" for c in authorization):
            # Sent as an HTTP header: visible ASCII and spaces only (no line breaks to inject others).
            raise StreamError(400, "delivery.authorization_header must be visible ASCII characters and spaces.")
    else:
        # Poll: the hub gives the endpoint and sends no header; what was sent for them is not
        # used, but it must still be what the documented body allows (a string or null).
        _text(delivery.get("endpoint_url"), "delivery.endpoint_url", 2000)
        _text(delivery.get("authorization_header"), "delivery.authorization_header", 4000)
        endpoint_url, authorization = None, None
    requested = body.get("events_requested", current.events_requested if current else [])
    if not isinstance(requested, list) or not all(isinstance(e, str) and len(e) <= 200 and storable(e) for e in requested) or len(requested) > 50:
        raise StreamError(400, "events_requested must be a list of event type URIs.")
    description = _text(body.get("description", current.description if current else None), "description", 500)
    return Wanted(method, endpoint_url, authorization, list(dict.fromkeys(requested)), description)


def _seal(cipher: KeyCipher, header: str | None, stream_id: str) -> str | None:
    return cipher.seal({"h": header}, purpose=f"ssf-authorization:{stream_id}") if header else None


def authorization(cipher: KeyCipher, stream: SsfStream) -> str | None:
    """The receiver's authorization header, opened (for sending)."""
    if not stream.authorization_header:
        return None
    return str(cipher.open(stream.authorization_header, purpose=f"ssf-authorization:{stream.stream_id}")["h"])


def poll_url(issuer: str, stream_id: str) -> str:
    return f"{issuer}/api/v1/ssf/poll/{stream_id}"


def configuration(stream: SsfStream, *, issuer: str, client_id: str) -> dict[str, Any]:
    """The stream as SSF 1.0 section 8.1.1 shows it (without the authorization header)."""
    delivery: dict[str, Any] = {"method": stream.delivery_method}
    delivery["endpoint_url"] = stream.endpoint_url if stream.delivery_method == PUSH else poll_url(issuer, stream.stream_id)
    out: dict[str, Any] = {
        "stream_id": stream.stream_id,
        "iss": issuer,
        "aud": client_id,
        "delivery": delivery,
        "events_supported": list(events.SUPPORTED),
        "events_requested": list(stream.events_requested),
        "events_delivered": events.delivered(stream.events_requested),
        "min_verification_interval": MIN_VERIFICATION_INTERVAL,
    }
    if stream.description:
        out["description"] = stream.description
    return out


async def of_service(db: AsyncSession, service_id: int, stream_id: str | None = None, *, lock: bool = False) -> SsfStream:
    """The service's stream (with ``stream_id``, only if it is that one). Another service's
    stream is not found, exactly as an unknown one."""
    query = select(SsfStream).where(SsfStream.service_id == service_id)
    if stream_id is not None:
        query = query.where(SsfStream.stream_id == stream_id)
    if lock:
        query = query.with_for_update()
    stream = await db.scalar(query)
    if stream is None:
        raise StreamError(404, "No such stream.")
    return stream


async def create(db: AsyncSession, cipher: KeyCipher, service_id: int, body: dict[str, Any]) -> SsfStream:
    """The service's stream, as ``body`` asks (409 when it has one already)."""
    if await db.scalar(select(SsfStream.id).where(SsfStream.service_id == service_id)) is not None:
        raise StreamError(409, "This service has a stream already; update or delete it.")
    want = wanted({k: v for k, v in body.items() if k not in READ_ONLY})
    stream_id = str(uuid.uuid4())
    now = utcnow()
    stream = SsfStream(
        stream_id=stream_id,
        service_id=service_id,
        delivery_method=want.method,
        endpoint_url=want.endpoint_url,
        authorization_header=_seal(cipher, want.authorization_header, stream_id),
        events_requested=want.events_requested,
        description=want.description,
        status="enabled",
        created_at=now,
        updated_at=now,
    )
    db.add(stream)
    await db.flush()
    return stream


def current(cipher: KeyCipher, stream: SsfStream) -> Wanted:
    return Wanted(stream.delivery_method, stream.endpoint_url, authorization(cipher, stream), list(stream.events_requested), stream.description)


async def change(db: AsyncSession, cipher: KeyCipher, stream: SsfStream, want: Wanted) -> SsfStream:
    """Apply a replacement or update. SETs already waiting stay on the channel they were written
    for: a change of delivery method moves the waiting ones to the new one."""
    if want.method != stream.delivery_method:
        old, new = ("ssf", "ssf_poll") if want.method == POLL else ("ssf_poll", "ssf")
        await db.execute(
            update(Notice).where(Notice.service_id == stream.service_id, Notice.channel == old, Notice.state == "pending").values(channel=new, next_attempt_at=utcnow())
        )
    stream.delivery_method = want.method
    stream.endpoint_url = want.endpoint_url
    stream.authorization_header = _seal(cipher, want.authorization_header, stream.stream_id)
    stream.events_requested = want.events_requested
    stream.description = want.description
    stream.updated_at = utcnow()
    await db.flush()
    return stream


async def remove(db: AsyncSession, stream: SsfStream) -> None:
    """Delete the stream and every SET still waiting on it (SSF 1.0 section 8.1.1.5)."""
    await db.execute(delete(Notice).where(Notice.service_id == stream.service_id, Notice.channel.in_(("ssf", "ssf_poll")), Notice.state == "pending"))
    await db.delete(stream)


async def set_status(db: AsyncSession, stream: SsfStream, status: Any, reason: Any) -> SsfStream:
    """``enabled``, ``paused`` (SETs kept until enabled again) or ``disabled`` (waiting SETs are
    dropped and no more are made: SSF 1.0 section 8.1.2)."""
    if status not in STATUSES:
        raise StreamError(400, "status must be enabled, paused or disabled.")
    stream.status_reason = _text(reason, "reason", 500)
    if status == "disabled" and stream.status != "disabled":
        await db.execute(delete(Notice).where(Notice.service_id == stream.service_id, Notice.channel.in_(("ssf", "ssf_poll")), Notice.state == "pending"))
    stream.status = status
    stream.updated_at = utcnow()
    await db.flush()
    return stream
