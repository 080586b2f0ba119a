"""A dead letter stays open only while its delivery is dead: a newer change (or a link, or a
resync) that brings the delivery back closes it, and a delivery that dies again has one open
dead letter, not two. Redelivering closes it too."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from identity import deliveries as status
from identity.accounts.store import find_by_sub
from identity.appkeys import DB
from identity.db.models import DeadLetter, Delivery, Service, utcnow
from schemas.events import LinkCreated, ProfileChanged
from sync import fanout
from tests.support import Hub
from tests.sync.helpers import link_directly


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:
    # The test plays the worker itself: no worker of the hub's own claims the rows meanwhile.
    return kafka_settings | {"sync_in_process": False}


async def _give_up(hub: Hub, sub: str) -> None:
    """What the deliverer does when retries give up: the delivery is dead, with its letter."""
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        delivery = await db.scalar(select(Delivery).where(Delivery.account_id == account.id))
        assert delivery is not None
        await db.execute(update(Delivery).where(Delivery.id == delivery.id).values(state="dead"))
        db.add(
            DeadLetter(
                delivery_id=delivery.id, service_id=delivery.service_id, account_id=account.id, channel=delivery.channel,
                version=delivery.wanted_version, attempts=9, last_error="HTTP 500", gave_up_at=utcnow(),
            )
        )


async def _changed(hub: Hub, sub: str, version: int) -> None:
    """The fan-out records a newer change for the person."""
    async with hub.app[DB].begin() as db:
        event = ProfileChanged(
            id=str(uuid.uuid4()), sub=sub, version=version, changed=["given_name"], channel="support", occurred_at=utcnow()
        )
        await fanout.record(db, [event], echo_suppression=True)


async def _open(hub: Hub) -> list[dict]:
    async with hub.app[DB]() as db:
        return await status.dead_letters(db)


async def test_a_revived_delivery_closes_its_dead_letter_and_a_second_death_opens_one(hub: Hub) -> None:
    service = await hub.add_service(name="Store", webhook_url="https://store.example/hooks")
    sub = await hub.add_user(verified=True)
    await link_directly(hub, [sub], service.client_id)
    async with hub.app[DB].begin() as db:
        now = utcnow()
        await fanout.record(db, [LinkCreated(id=str(uuid.uuid4()), sub=sub, client_id=service.client_id, version=1, occurred_at=now)], echo_suppression=True)

    await _give_up(hub, sub)
    [letter] = await _open(hub)
    assert letter["sub"] == sub and letter["client_id"] == service.client_id

    await _changed(hub, sub, 2)
    assert await _open(hub) == []
    async with hub.app[DB]() as db:
        store = await db.scalar(select(Service).where(Service.client_id == service.client_id))
        assert store is not None
        assert (await status.service_status(db, store))["dead_letters"] == 0  # type: ignore[index]

    await _give_up(hub, sub)
    [again] = await _open(hub)
    assert again["id"] != letter["id"]
    async with hub.app[DB].begin() as db:
        assert await status.redeliver(db, client_id=service.client_id) == 1
    assert await _open(hub) == []
    async with hub.app[DB]() as db:
        delivery = await db.scalar(select(Delivery))
        assert delivery is not None and delivery.state == "active"
        assert delivery.next_attempt_at <= utcnow() + dt.timedelta(seconds=1)
