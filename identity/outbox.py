"""The transactional outbox: events are rows written in the caller's transaction, so a change
is never committed without its event nor an event without its change. The sync relay
publishes them to Kafka."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db import dialect
from identity.db.models import OutboxEvent
from identity.logs import REQUEST_ID
from schemas.events import PROFILE_TOPIC, LinkCreated, ProfileChanged


def new_event_id() -> str:
    return str(uuid.uuid4())


def row(event: ProfileChanged | LinkCreated) -> dict[str, Any]:
    """The outbox row of ``event``: for the hub's topic, keyed by the person's ``sub`` (so one
    person's events stay in order on one partition). An event written while answering a request
    carries that request's id (in its payload and the row's ``request_id``), which the relay puts
    in the Kafka record's ``request-id`` header and the sync worker in the service's
    ``X-Request-Id``: one change can be followed from the access log line to the webhook."""
    if event.request_id is None and (rid := REQUEST_ID.get()) is not None:
        event = event.model_copy(update={"request_id": rid})
    return {
        "topic": PROFILE_TOPIC,
        "key": event.sub,
        "event_type": event.type,
        "payload": event.model_dump(mode="json"),
        "created_at": event.occurred_at,
        "request_id": event.request_id,
    }


def add(db: AsyncSession, event: ProfileChanged | LinkCreated) -> None:
    """Queue ``event`` in the caller's transaction (written at its next flush)."""
    db.add(OutboxEvent(**row(event)))


@functools.cache
def stamping(dialect_name: str, column: str) -> Any:
    """The statement stamping the outbox rows ``ids`` with ``column`` (``published_at`` by the
    relay, ``consumed_at`` by the sync worker) set ``at``, built once per database."""
    o = OutboxEvent.__table__.c
    return update(OutboxEvent.__table__).where(dialect.among(dialect_name, o.id, "ids")).values({column: bindparam("at", type_=o[column].type)})
