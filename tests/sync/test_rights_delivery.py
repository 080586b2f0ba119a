"""A rights request for one service reaches that service only, on its webhook (signed as Standard
Webhooks) and its topic, through the real sync worker and broker; the service answers it and the
person sees the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from identity.appkeys import DB
from identity.db.models import Notice, Service
from schemas.events import RightsRequested
from tests.rights_support import call, move, open_request
from tests.rights_support import service_token as client_credentials
from tests.sync.helpers import group_timeouts
from tests.support import Browser, Hub
from tests.sync.conftest import add_member, link
from tests.sync.receivers import Receivers


async def read_topic(
    hub: Hub, topic: str, wanted: str, timeout: float = 30.0
) -> tuple[Any, dict[str, Any]]:
    """The first message of ``topic`` whose event id is ``wanted``."""
    consumer = AIOKafkaConsumer(
        hub.settings.kafka_topic_prefix + topic,
        bootstrap_servers=hub.settings.kafka_bootstrap_servers,
        group_id="forum-rights-reader",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **group_timeouts(hub.settings),
    )
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    event = json.loads(message.value)
                    if event["id"] == wanted:
                        return message, event
    finally:
        await consumer.stop()
    raise AssertionError(f"no event {wanted} on {topic} within {timeout} s")


async def test_a_rights_request_for_forum_reaches_forum_only_with_a_valid_signature(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    sub = await hub.add_user(verified=True)
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum", topic=True)
    store_token = (await link(store, browser))["access_token"]
    forum_token = (await link(forum, browser))["access_token"]

    to_forum = await open_request(
        hub,
        forum_token,
        type="erasure",
        service=forum.rp.client_id,
        details="Close my forum account",
    )
    assert to_forum.status_code == 201, to_forum.text
    request = to_forum.json()
    assert (
        await open_request(hub, store_token, type="access")
    ).status_code == 201  # the hub's own: no event
    to_store = await open_request(
        hub, store_token, type="objection", service=store.rp.client_id
    )
    assert to_store.status_code == 201

    # Forum's webhook: verified with the standardwebhooks library against the exact bytes sent.
    event = await receivers.wait_for_event("forum", "rights.requested", sub)
    raw = receivers["forum"].bodies[receivers["forum"].received.index(event)]
    assert forum.webhook_secret
    assert (
        Webhook(forum.webhook_secret).verify(raw, event["_headers"])["id"]
        == event["id"]
    )
    assert event["_headers"]["webhook-id"] == event["id"]
    parsed = RightsRequested.model_validate_json(raw)
    assert parsed.data.id == request["id"] and parsed.data.sub == sub
    assert (
        parsed.data.type == "erasure"
        and parsed.data.details == "Close my forum account"
    )
    assert parsed.data.due_at.isoformat().replace("+00:00", "Z") == request["due_at"]

    # Forum's topic: the same event, keyed by sub, with the same webhook-id.
    assert forum.topic
    message, on_topic = await read_topic(hub, forum.topic, event["id"])
    assert (
        message.key.decode() == sub
        and dict(message.headers)["webhook-id"].decode() == event["id"]
    )
    assert on_topic == {k: v for k, v in event.items() if k != "_headers"}

    # Store hears of its own request only, never of Forum's.
    store_event = await receivers.wait_for_event("store", "rights.requested", sub)
    assert store_event["data"]["id"] == to_store.json()["id"]
    rights_seen = {  # each request once (at least once: a copy may come again)
        name: list(
            dict.fromkeys(
                e["data"]["id"]
                for e in receivers[name].received
                if e["type"] == "rights.requested"
            )
        )
        for name in ("store", "forum")
    }
    assert rights_seen == {"store": [to_store.json()["id"]], "forum": [request["id"]]}
    assert receivers["store"].rejected == receivers["forum"].rejected == 0
    async with hub.app[DB]() as db:
        query = (
            select(Service.client_id, Notice.channel)
            .join(Service)
            .where(Notice.message_id == event["id"])
        )
        rows = (await db.execute(query)).all()
    assert sorted(rows) == [
        (forum.rp.client_id, "topic"),
        (forum.rp.client_id, "webhook"),
    ]

    # Forum answers through the API; the person sees it.
    token = await client_credentials(forum.rp)
    assert (
        await move(hub, token, request["id"], "completed", "Account closed.")
    ).status_code == 200
    seen = (
        await call(
            hub, "GET", f"/api/v1/me/rights-requests/{request['id']}", forum_token
        )
    ).json()
    assert (
        seen["status"] == "completed"
        and seen["history"][-1]["reason"] == "Account closed."
    )
