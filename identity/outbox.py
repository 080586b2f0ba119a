"""The transactional outbox: events are rows written in the caller's transaction, so a change
is never committed without its event nor an event without its change. The sync relay
publishes them to Kafka."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import OutboxEvent
from schemas.events import PROFILE_TOPIC, LinkCreated, ProfileChanged


def new_event_id() -> str:
    return str(uuid.uuid4())


def row(event: ProfileChanged | LinkCreated) -> dict[str, Any]:
    """The outbox row of ``event``: for the hub's topic, keyed by the person's ``sub`` (so one
    person's events stay in order on one partition)."""
    return {
        "topic": PROFILE_TOPIC,
        "key": event.sub,
        "event_type": event.type,
        "payload": event.model_dump(mode="json"),
        "created_at": event.occurred_at,
    }


def add(db: AsyncSession, event: ProfileChanged | LinkCreated) -> None:
    """Queue ``event`` in the caller's transaction (written at its next flush)."""
    db.add(OutboxEvent(**row(event)))
