"""Webhook delivery, signed as Standard Webhooks (https://www.standardwebhooks.com): headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
``id.timestamp.body`` with the endpoint's ``whsec_`` secret. Signing uses the ``standardwebhooks``
library, the same one receivers verify with."""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass

import aiohttp
from standardwebhooks.webhooks import Webhook

from identity import outbound

MAX_RETRY_AFTER = 86400.0


def signed_headers(signer: Webhook, message_id: str, body: str, now: dt.datetime) -> dict[str, str]:
    signature = signer.sign(message_id, now, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


@dataclass(frozen=True)
class Outcome:
    """What an attempt came to: ``ok``, ``retry`` (with an optional earliest time), ``gone``, or
    ``rejected`` (a Shared Signals receiver refused the SET for good: ``sync.ssf``)."""

    result: str
    error: str | None = None
    status: int | None = None
    retry_after: float | None = None
    #: What the receiving end called what it made (a SCIM server's User ``id``), if anything.
    resource_id: str | None = None


#: What a service (sync status) and support agents (console) read when the policy refused every
#: address of the webhook: plainly that, and the setting that changes it; nothing of what is there.
ADDRESS_NOT_ALLOWED = (
    "the webhook's address is not allowed: the hub delivers only to public internet addresses "
    "(the hub's operator can allow a private network with ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS)"
)


#: What a call to a service's address may fail with before any answer (see :func:`unanswered`).
UNANSWERED = (outbound.AddressNotAllowed, TimeoutError, aiohttp.ClientError, OSError)


def unanswered(exc: BaseException, timeout: aiohttp.ClientTimeout, *, whose: str = "the webhook's", prefix: str = "") -> Outcome:
    """What a call that got no answer comes to (retried): its address not allowed by the
    outbound policy, no answer within ``timeout``, or the connection failed. ``whose`` names
    the address in the message, ``prefix`` the kind of endpoint."""
    if isinstance(exc, outbound.AddressNotAllowed):
        return Outcome("retry", ADDRESS_NOT_ALLOWED.replace("the webhook's", whose))
    if isinstance(exc, TimeoutError):
        return Outcome("retry", f"{prefix}no answer within {timeout.total:g} s")
    return Outcome("retry", f"{prefix}{type(exc).__name__}: {exc}"[:300])


async def post(
    http: aiohttp.ClientSession,
    url: str,
    signer: Webhook,
    message_id: str,
    body: str,
    *,
    timeout: aiohttp.ClientTimeout,
    request_id: str | None = None,
) -> Outcome:
    """Sign and POST one delivery through an ``identity.outbound`` session (which refuses
    non-public addresses and reads a bounded prefix of the answer); what the answer means.
    ``request_id``: of the hub request that caused it, sent as ``X-Request-Id``."""
    headers = signed_headers(signer, message_id, body, dt.datetime.now(dt.UTC))
    if request_id:
        headers["X-Request-Id"] = request_id
    try:
        answer = await outbound.post(http, url, data=body.encode(), headers=headers, timeout=timeout)
    except UNANSWERED as exc:
        return unanswered(exc, timeout)
    status = answer.status
    if 200 <= status < 300:
        return Outcome("ok", status=status)
    if status == 410:
        return Outcome("gone", "410 Gone: the endpoint asked to be disabled", status=status)
    retry_after = parse_retry_after(answer.headers.get("Retry-After")) if status in (429, 503) else None
    return Outcome("retry", f"HTTP {status}", status=status, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, min((when - dt.datetime.now(dt.UTC)).total_seconds(), MAX_RETRY_AFTER))
