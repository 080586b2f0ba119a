"""RFC 8936 poll delivery: a service polls its stream's SETs.

One request acknowledges SETs (``ack``: done with, never sent again), reports those it could not
process (``setErrs``: kept as dead letters with the receiver's ``err`` and ``description``, not
sent again), and receives up to ``maxEvents`` SETs not yet acknowledged, oldest first. A SET
returned but not acknowledged is returned again by a later poll: at least once. Unacknowledged
SETs are kept for ``ssf_poll_retention_days`` (``identity.purge``), then dropped."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import PENDING, Notice, SsfStream, utcnow
from identity.errors import storable
from identity.ssf.streams import StreamError

CHANNEL = "ssf_poll"
MAX_EVENTS = 100


@dataclass(frozen=True)
class Request:
    max_events: int
    return_immediately: bool
    acks: list[str]
    errors: dict[str, str]


def request(body: Any) -> Request:
    """Check a poll request's body (RFC 8936 section 2.4)."""
    if not isinstance(body, dict):
        raise StreamError(400, "The poll request must be a JSON object.")
    max_events = body.get("maxEvents", MAX_EVENTS)
    if not isinstance(max_events, int) or isinstance(max_events, bool) or not 0 <= max_events:
        raise StreamError(400, "maxEvents must be a non-negative integer.")
    immediately = body.get("returnImmediately", False)
    if not isinstance(immediately, bool):
        raise StreamError(400, "returnImmediately must be true or false.")
    acks = body.get("ack", [])
    if not isinstance(acks, list) or not all(isinstance(a, str) and len(a) <= 64 for a in acks) or len(acks) > 1000:
        raise StreamError(400, "ack must be a list of jti values.")
    errs = body.get("setErrs", {})
    if not isinstance(errs, dict) or len(errs) > 1000:
        raise StreamError(400, "setErrs must be an object of jti to {err, description}.")
    errors = {}
    for jti, value in errs.items():
        if len(jti) > 64 or not isinstance(value, dict) or not isinstance(value.get("err"), str):
            raise StreamError(400, "setErrs must be an object of jti to {err, description}.")
        errors[jti] = f"{value['err']}: {value.get('description') or ''}".strip(": ")[:500]
    # A jti the database could not hold matches no SET: it is left out rather than asked about.
    return Request(
        min(max_events, MAX_EVENTS), immediately, [a for a in acks if storable(a)], {j: e for j, e in errors.items() if storable(j) and storable(e)}
    )


async def answer(db: AsyncSession, stream: SsfStream, acks: list[str], errors: dict[str, str], now: dt.datetime | None = None) -> None:
    """Record the receiver's acknowledgements and errors (only its own pending SETs)."""
    now = now or utcnow()
    mine = (Notice.service_id == stream.service_id, Notice.channel == CHANNEL, Notice.state == PENDING)
    if acks:
        await db.execute(update(Notice).where(*mine, Notice.message_id.in_(acks)).values(state="delivered", delivered_at=now, attempts=Notice.attempts + 1))
    for jti, error in errors.items():
        await db.execute(
            update(Notice).where(*mine, Notice.message_id == jti).values(state="dead", last_error=error, failing_since=now, next_attempt_at=now, attempts=Notice.attempts + 1)
        )


async def waiting(db: AsyncSession, stream: SsfStream, limit: int) -> tuple[list[tuple[str, str]], bool]:
    """Up to ``limit`` unacknowledged SETs, oldest first, as (jti, stored claims), and whether
    more are waiting. None while the stream is paused."""
    if stream.status != "enabled":
        return [], False
    n = Notice.__table__.c
    rows = (
        await db.execute(
            select(n.message_id, n.body)
            .where(n.service_id == stream.service_id, n.channel == CHANNEL, n.state == PENDING)
            .order_by(n.id)
            .limit(limit + 1)
        )
    ).all()
    return [(jti, body) for jti, body in rows[:limit]], len(rows) > limit

