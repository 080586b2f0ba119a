"""One change followed end to end by its request id: the access log line of the HTTP request
that made it, its outbox row, the Kafka records (the hub's topic and the service's), the webhook
request a service receives (``X-Request-Id`` beside the Standard Webhooks headers), and a notice
caused by a request likewise."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Notice, OutboxEvent
from identity.logs import RequestIdFilter
from schemas.events import PROFILE_TOPIC
from tests.support import Browser, Hub, eventually, form
from tests.sync.conftest import add_member, link, patch_me
from tests.sync.helpers import settled
from tests.sync.receivers import Receivers

pytestmark = pytest.mark.e2e


async def _records(hub: Hub, topic: str, wanted: str) -> ConsumerRecord:
    """The first record on ``topic`` whose ``request-id`` header is ``wanted`` (read from its
    partitions directly: no consumer group to join)."""
    name = hub.settings.kafka_topic_prefix + topic
    consumer = AIOKafkaConsumer(bootstrap_servers=hub.settings.kafka_bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async def assigned() -> bool:  # the topic may not be made yet
            if name in await consumer.topics():
                consumer.assign([TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()])
            return bool(consumer.assignment())

        await eventually(assigned, timeout=30, what=f"topic {name}")
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    if dict(message.headers).get("request-id") == wanted.encode():
                        return message
        raise AssertionError(f"no record with request-id {wanted} on {topic}")
    finally:
        await consumer.stop()


async def test_a_change_is_followed_by_its_request_id(
    hub: Hub, browser: Browser, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="onesignin.access")
    await hub.add_user(verified=True)
    store = await add_member(hub, receivers, "store", scope="openid profile")
    forum = await add_member(hub, receivers, "forum", scope="openid profile", topic=True)
    token = (await link(store, browser))["access_token"]
    await link(forum, browser)
    # The forum's link snapshot sent first: sent late, it would carry the person as they are then
    # (the change below included) under the link's request id, and the change none of its own.
    await settled(hub, forum.rp.client_id)

    rid = "req-trace-0001"
    changed = await patch_me(hub, token, {"given_name": "Anna"}, **{"X-Request-Id": rid})
    assert changed.status_code == 200, changed.text
    sub, version = changed.json()["sub"], changed.json()["version"]

    # The access log line of the request.
    access = [r for r in caplog.records if r.name == "onesignin.access" and getattr(r, "request_id", None) == rid]
    assert [r.getMessage().split(" ")[:3] for r in access] == [["PATCH", "/api/v1/me", "200"]]
    # Its outbox row, in the column and the event's envelope.
    async with hub.app[DB]() as db:
        row = (await db.scalars(select(OutboxEvent).where(OutboxEvent.request_id == rid))).one()
    assert row.payload["request_id"] == rid and row.payload["sub"] == sub
    # The hub's topic: the relay's record carries it in its headers (and the event).
    record = await _records(hub, PROFILE_TOPIC, rid)
    assert json.loads(record.value)["version"] == version
    # The webhook the other service received (the change's own service is not told its change).
    delivery = await receivers.wait_for("forum", sub, version)
    received = next(r for r in receivers["forum"].received if r["data"] is delivery)
    assert received["_headers"]["x-request-id"] == rid
    assert received["_headers"]["webhook-id"] == received["id"]
    # And the service's own topic.
    assert forum.topic
    on_topic = await _records(hub, forum.topic, rid)
    assert json.loads(on_topic.value)["data"]["version"] == version

    # A notice caused by a request (the person unlinks the forum) carries that request's id.
    confirm = await browser.go(f"/account/unlink/{forum.rp.client_id}")
    f = form(confirm.text, "/account/unlink/")
    done = await browser.http.post(f.action, data=f.fields, headers={"X-Request-Id": "req-trace-0002"})
    assert done.status_code == 303, done.text
    revoked = await receivers.wait_for_event("forum", "link.revoked", sub)
    assert revoked["_headers"]["x-request-id"] == "req-trace-0002"
    async with hub.app[DB]() as db:
        assert {n.request_id for n in await db.scalars(select(Notice))} == {"req-trace-0002"}
