"""The transactional outbox: a change and its event commit together or not at all, and the relay
publishes each row once, in order, then forgets it after the retention period."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select

from identity.accounts.store import update_details
from identity.db.models import Account, OutboxEvent
from identity.web.appkeys import DB
from sync.metrics import SyncMetrics
from sync.relay import Relay
from tests.support import Hub


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:
    # The test drives the relay itself.
    return kafka_settings | {"sync_in_process": False, "kafka_profile_partitions": 2}


async def _events(hub: Hub) -> list[OutboxEvent]:
    async with hub.app[DB]() as db:
        return list((await db.execute(select(OutboxEvent).order_by(OutboxEvent.id))).scalars())


async def test_no_change_without_its_event_and_no_event_without_its_change(hub: Hub) -> None:
    sub = await hub.add_user(verified=True)
    before = len(await _events(hub))

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with hub.app[DB].begin() as db:
            account = await db.scalar(select(Account).where(Account.sub == sub))
            assert account is not None
            await update_details(db, account, {"given_name": "Rolled"}, channel="support")
            raise Abort
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None and account.given_name == "Ann" and account.version == 1
    assert len(await _events(hub)) == before

    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        changed = await update_details(db, account, {"given_name": "Kept", "locale": "en-GB"}, channel="support", actor="agent")
    events = await _events(hub)
    assert len(events) == before + 1
    payload = events[-1].payload
    assert payload["type"] == "profile.changed" and payload["sub"] == sub and payload["version"] == 2
    assert set(payload["changed"]) == set(changed) == {"given_name", "name", "locale"}
    assert payload["channel"] == "support"
    # The hub's own topic carries which claims changed, never their values.
    assert "Kept" not in str(payload) and "en-GB" not in str(payload)


async def test_the_relay_publishes_each_row_once_in_order_and_cleans_up(hub: Hub) -> None:
    sub = await hub.add_user(verified=True)
    for i in range(5):
        async with hub.app[DB].begin() as db:
            account = await db.scalar(select(Account).where(Account.sub == sub))
            assert account is not None
            await update_details(db, account, {"family_name": f"F{i}"}, channel="support")
    settings = hub.settings.model_copy(update={"outbox_retention": 0})
    relay = Relay(settings, hub.app[DB], settings.kafka_bootstrap_servers or "", idempotent=settings.kafka_enable_idempotence, metrics=SyncMetrics())
    await relay._connect()
    try:
        assert await relay.publish_batch() == 5
        assert await relay.publish_batch() == 0  # nothing twice
        events = await _events(hub)
        assert all(e.published_at is not None for e in events)
        assert [e.payload["version"] for e in events] == [2, 3, 4, 5, 6]
        relay._last_cleanup = -1e9
        await relay._cleanup_now_and_then()
    finally:
        await relay._disconnect()
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(OutboxEvent)) == 0

    consumer = AIOKafkaConsumer(
        settings.kafka_topic_prefix + "onesignin.profile.v1",
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"check-{dt.datetime.now().timestamp()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        versions: list[int] = []
        for _ in range(40):
            for messages in (await consumer.getmany(timeout_ms=250)).values():
                for message in messages:
                    assert message.key == sub.encode()
                    versions.append(json.loads(message.value)["version"])
            if len([v for v in versions if v >= 2]) >= 5:
                break
    finally:
        await consumer.stop()
    # One person's events are on one partition, in the order of their versions.
    mine = [v for v in versions if v >= 2]
    assert mine == [2, 3, 4, 5, 6]
