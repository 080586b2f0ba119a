"""The link lifecycle against the real sync pipeline (embedded broker, relay, worker, webhook
receivers over HTTP): a cancelled or unlinked service hears nothing more while the others keep
receiving; an unlink reaches the service as a signed ``link.revoked`` notice, retried while its
webhook fails, in order per person, on its topic too; signing in again resumes sync."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from identity import admin, notices
from identity import notices as identity_notices
from identity.accounts.store import find_by_sub
from identity.appkeys import CIPHER, DB
from identity.db.models import Delivery, Notice, Service
from schemas.events import LinkRevoked, LinkRevokedData, service_event
from sync.runtime import DELIVERER
from tests.support import PRODUCTION_TOPOLOGY, Browser, Hub, eventually, form
from tests.sync.conftest import Member, add_member, link, service_token
from tests.sync.helpers import group_timeouts, SyncProcess, change, settled
from tests.sync.receivers import Receivers, body_of


async def _call(hub: Hub, method: str, path: str, token: str) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.request(
            method, path, headers={"Authorization": f"Bearer {token}"}
        )


async def _sub(hub: Hub) -> str:
    from identity.accounts.store import find_by_email

    async with hub.app[DB]() as db:
        account = await find_by_email(db, "ann@example.com")
        assert account is not None
        return account.sub


async def _unlink(browser: Browser, member: Member) -> None:
    confirm = await browser.go(f"/account/unlink/{member.rp.client_id}")
    f = form(confirm.text, "/account/unlink/")
    done = await browser.http.post(f.action, data=f.fields)
    assert done.status_code == 303, done.text


async def _settled(hub: Hub, expected: int = 0, timeout: float = 30.0) -> list[Notice]:
    """Wait until every notice left the pending state; return them all."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with hub.app[DB]() as db:
            rows = list((await db.scalars(select(Notice).order_by(Notice.id))).all())
        if len(rows) >= expected and all(n.state != "pending" for n in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, [
            (n.id, n.state, n.attempts, n.last_error) for n in rows
        ]
        await asyncio.sleep(0.05)


async def test_after_a_service_cancels_it_gets_nothing_more_while_others_keep_receiving(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum")
    await hub.add_user(verified=True)
    await link(store, browser)
    await link(forum, browser)
    ann = await _sub(hub)
    await receivers.wait_for("store", ann, 1)
    await receivers.wait_for("forum", ann, 1)

    # The store's webhook is down, so a change waits for it in the queue...
    receivers["store"].fail_with = 503
    v2 = await change(hub, ann, given_name="Anne")
    await receivers.wait_for("forum", ann, v2)
    for _ in range(200):
        if receivers["store"].failures_answered:
            break
        await asyncio.sleep(0.05)
    assert receivers["store"].failures_answered
    # ...when the store reports it cancelled its own account for Ann: what waited is dropped.
    cancelled = await _call(
        hub, "POST", f"/api/v1/links/{ann}/cancel", await service_token(store)
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    async with hub.app[DB]() as db:
        store_id = await db.scalar(
            select(Service.id).where(Service.client_id == store.rp.client_id)
        )
        assert (
            await db.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.service_id == store_id)
            )
            == 0
        )

    # A retry already in flight when the cancel came still meets the failing endpoint.
    for _ in range(200):
        if not hub.app[DELIVERER].inflight[(store_id, "webhook")]:
            break
        await asyncio.sleep(0.05)
    assert not hub.app[DELIVERER].inflight[(store_id, "webhook")]
    receivers["store"].fail_with = None
    received = len(receivers["store"].received)
    v3 = await change(hub, ann, family_name="Sample")
    v4 = await change(hub, ann, locale="fr-FR")
    assert (await receivers.wait_for("forum", ann, v4))["profile"][
        "family_name"
    ] == "Sample"
    assert v3 < v4
    # The forum got the later changes; once everything they called for is settled, the store
    # got nothing.
    await settled(hub, store.rp.client_id)
    assert len(receivers["store"].received) == received
    assert receivers["store"].version(ann) == 1
    # No notice goes to a service that cancelled: it knows.
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(Notice)) == 0


async def test_unlinking_stops_sync_and_the_service_gets_a_signed_link_revoked(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum")
    await hub.add_user(verified=True)
    await link(store, browser)
    await link(forum, browser)
    ann = await _sub(hub)
    await receivers.wait_for("store", ann, 1)

    await _unlink(browser, store)
    event = await receivers.wait_for_event("store", "link.revoked", ann, timeout=30)
    # Verified with the Standard Webhooks library and valid against the published schema.
    assert store.webhook_secret
    raw = receivers["store"].bodies[receivers["store"].received.index(event)]
    assert (
        Webhook(store.webhook_secret).verify(raw, event["_headers"])["id"]
        == event["id"]
    )
    assert receivers["store"].rejected == 0
    # Any other body fails verification.
    with pytest.raises(WebhookVerificationError):
        Webhook(store.webhook_secret).verify(body_of(event), event["_headers"])
    parsed = service_event.validate_python(
        {k: v for k, v in event.items() if k != "_headers"}
    )
    assert isinstance(parsed, LinkRevoked)
    assert event["_headers"]["webhook-id"] == event["id"]
    assert "keep or cancel" in event["data"]["note"]
    rows = await _settled(hub, 1)
    assert [(n.state, n.event_type, n.message_id) for n in rows] == [
        ("delivered", "link.revoked", event["id"])
    ]

    received = len(receivers["store"].received)
    v2 = await change(hub, ann, given_name="Anne")
    await receivers.wait_for("forum", ann, v2)
    await settled(hub, store.rp.client_id)
    assert len(receivers["store"].received) == received
    assert receivers["forum"].profile(ann)["given_name"] == "Anne"


async def test_signing_in_again_resumes_sync_with_a_fresh_snapshot(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store")
    await hub.add_user(verified=True)
    await link(store, browser)
    ann = await _sub(hub)
    await receivers.wait_for("store", ann, 1)
    await _unlink(browser, store)
    await receivers.wait_for_event("store", "link.revoked", ann, timeout=30)
    v2 = await change(hub, ann, given_name="Anne")
    await settled(hub, store.rp.client_id)
    assert receivers["store"].version(ann) == 1

    await link(store, browser)  # asks for consent again, then links
    snapshot = await receivers.wait_for("store", ann, v2)
    assert (
        snapshot["profile"]["given_name"] == "Anne" and snapshot["reason"] == "linked"
    )
    v3 = await change(hub, ann, family_name="Sample")
    assert (await receivers.wait_for("store", ann, v3))["profile"][
        "family_name"
    ] == "Sample"
    link_now = (
        await _call(hub, "GET", f"/api/v1/links/{ann}", await service_token(store))
    ).json()
    assert link_now["status"] == "active"


async def test_a_failing_webhook_gets_the_notice_again_with_the_same_id(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store")
    await hub.add_user(verified=True)
    await link(store, browser)
    ann = await _sub(hub)
    await receivers.wait_for("store", ann, 1)

    receivers["store"].fail_with = 500
    await _unlink(browser, store)
    for _ in range(400):
        async with hub.app[DB]() as db:
            waiting = await db.scalar(select(Notice))
        # Tried twice, and (a stalled attempt's outcome may come later) a failure recorded.
        if receivers["store"].failures_answered >= 2 and waiting and waiting.attempts:
            break
        await asyncio.sleep(0.05)
    assert receivers["store"].failures_answered >= 2
    assert (
        waiting is not None and waiting.state == "pending" and waiting.attempts >= 1
    )
    assert waiting.last_error == "HTTP 500" and waiting.failing_since is not None
    status = (
        await _call(hub, "GET", "/api/v1/sync/status", await service_token(store))
    ).json()
    assert status["notices"]["pending"] == 1

    receivers["store"].fail_with = None
    event = await receivers.wait_for_event("store", "link.revoked", ann)
    assert event["id"] == waiting.message_id
    rows = await _settled(hub, 1)
    assert rows[0].state == "delivered" and rows[0].attempts >= 2


class TestRetryAfter:
    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        # The notice must be tried once: a lease longer than any stall of a loaded test machine
        # (with the short test lease, a late outcome lets the notice be taken and sent again).
        return settings_overrides | {"sync_lease": 30.0}

    async def test_retry_after_is_honoured_and_410_disables_the_webhook(
        self, hub: Hub, browser: Browser, receivers: Receivers
    ) -> None:
        store = await add_member(hub, receivers, "store")
        await hub.add_user(verified=True)
        await link(store, browser)
        ann = await _sub(hub)
        await receivers.wait_for("store", ann, 1)

        receivers["store"].fail_with, receivers["store"].retry_after = 503, "60"
        await _unlink(browser, store)
        for _ in range(600):
            async with hub.app[DB]() as db:
                row = await db.scalar(select(Notice))
            if row is not None and row.attempts:
                break
            await asyncio.sleep(0.05)
        assert row is not None and row.attempts == 1 and row.failing_since is not None
        # Not before the minute the receiver asked for, although the schedule says 0.2 s.
        assert row.next_attempt_at - row.failing_since >= dt.timedelta(seconds=59)
        # The notice was tried once. (A snapshot sent again at least once may also meet the failing
        # endpoint: a redelivered Kafka batch requests it anew.)
        assert receivers["store"].failed_types.count("link.revoked") == 1

        # Due again now; this time the endpoint says it is gone for good.
        receivers["store"].fail_with, receivers["store"].retry_after = 410, None
        async with hub.app[DB].begin() as db:
            row = await db.get(Notice, row.id)
            assert row is not None
            row.next_attempt_at = row.failing_since
        notices.wake(hub.app)
        for _ in range(600):
            async with hub.app[DB]() as db:
                disabled = await db.scalar(
                    select(Service.webhook_disabled_at).where(
                        Service.client_id == store.rp.client_id
                    )
                )
            if disabled is not None:
                break
            await asyncio.sleep(0.05)
        assert disabled is not None
        status = (
            await _call(hub, "GET", "/api/v1/sync/status", await service_token(store))
        ).json()
        assert (
            status["webhook"]["state"] == "disabled" and status["notices"]["pending"] == 1
        )


async def test_a_notice_to_a_disabled_webhook_waits_and_is_sent_once_it_is_enabled(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    """A disabled webhook still gets its notice queued: the worker holds it until the webhook
    is enabled again, so the unlink reaches the service once its endpoint is fixed."""
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum")
    await hub.add_user(verified=True)
    await link(store, browser)
    await link(forum, browser)
    ann = await _sub(hub)
    await receivers.wait_for("store", ann, 1)
    await receivers.wait_for("forum", ann, 1)
    # Disabled as a 410 disables it: the worker closes the webhook at that answer.
    receivers["store"].fail_with = 410
    await change(hub, ann, given_name="Anne")

    async def disabled() -> Service | None:
        async with hub.app[DB]() as db:
            service = await db.scalar(select(Service).where(Service.client_id == store.rp.client_id))
        return service if service is not None and service.webhook_disabled_at is not None else None

    service = await eventually(disabled, what="the store's webhook disabled")
    url = service.webhook_url
    receivers["store"].fail_with = None

    await _unlink(browser, store)
    async with hub.app[DB]() as db:
        [waiting] = (await db.scalars(select(Notice))).all()
    assert (waiting.channel, waiting.event_type) == ("webhook", "link.revoked")
    # The forum's notice, written after it, goes out: the worker has claimed what it may send,
    # and the store's notice, due first, was not among it.
    await _unlink(browser, forum)
    await receivers.wait_for_event("forum", "link.revoked", ann, timeout=30)
    async with hub.app[DB]() as db:
        held = await db.get(Notice, waiting.id)
        assert held is not None and held.state == "pending" and held.attempts == 0
    assert not [e for e in receivers["store"].received if e["type"] == "link.revoked"]

    # Enabled again (the operator's `services update --webhook-url`): the notice goes out.
    async with hub.app[DB].begin() as db:
        await admin.update_service_sync(
            db, hub.app[CIPHER], store.rp.client_id, webhook_url=url
        )
    notices.wake(hub.app)
    event = await receivers.wait_for_event("store", "link.revoked", ann, timeout=30)
    assert event["id"] == waiting.message_id
    assert [n.state for n in await _settled(hub, 2)] == ["delivered", "delivered"]


class TestGivingUp:
    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        return settings_overrides | {"sync_give_up_after": 1.0}

    async def test_a_notice_that_keeps_failing_is_dead_and_shown(
        self, hub: Hub, browser: Browser, receivers: Receivers
    ) -> None:
        store = await add_member(hub, receivers, "store")
        await hub.add_user(verified=True)
        await link(store, browser)
        ann = await _sub(hub)
        await receivers.wait_for("store", ann, 1)
        receivers["store"].fail_with = 500
        await _unlink(browser, store)
        rows = await _settled(hub, 1)
        assert rows[0].state == "dead" and rows[0].attempts >= 2
        status = (
            await _call(hub, "GET", "/api/v1/sync/status", await service_token(store))
        ).json()
        assert status["notices"] == {"pending": 0, "dead": 1}

        # Listed for the operator, and sent again (the same event) once the webhook works.
        async with hub.app[DB]() as db:
            listed = await identity_notices.dead(db, client_id=store.rp.client_id)
        assert [(d["sub"], d["type"], d["last_error"]) for d in listed] == [
            (ann, "link.revoked", "HTTP 500")
        ]
        receivers["store"].fail_with = None
        async with hub.app[DB].begin() as db:
            assert await identity_notices.revive(db, ids=[listed[0]["id"]]) == 1
        notices.wake(hub.app)
        event = await receivers.wait_for_event("store", "link.revoked", ann)
        assert event["id"] == listed[0]["message_id"]
        assert [n.state for n in await _settled(hub, 1)] == ["delivered"]


async def test_one_persons_notices_arrive_in_order_on_the_webhook_and_the_topic(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store", topic=True)
    await hub.add_user(verified=True)
    await link(store, browser)
    ann = await _sub(hub)
    await receivers.wait_for("store", ann, 1)

    # The webhook fails at first, so the notices queue up behind the first one.
    receivers["store"].fail_with = 500
    ids = []
    async with hub.app[DB].begin() as db:
        service = await db.scalar(
            select(Service).where(Service.client_id == store.rp.client_id)
        )
        account = await find_by_sub(db, ann)
        assert service is not None and account is not None
        for _ in range(5):
            now = notices.timestamp()
            event = LinkRevoked(
                id=notices.new_notice_id(),
                timestamp=now,
                data=LinkRevokedData(sub=ann, revoked_at=now),
            )
            notices.add(db, service, account.id, ann, event)
            ids.append(event.id)
    notices.wake(hub.app)
    for _ in range(400):
        async with hub.app[DB]() as db:
            tried = (
                await db.scalars(
                    select(Notice.message_id).where(
                        Notice.channel == "webhook", Notice.attempts > 0
                    )
                )
            ).all()
        if receivers["store"].failures_answered >= 2 and tried:
            break
        await asyncio.sleep(0.05)
    # One at a time: only the first was tried, however often.
    assert receivers["store"].failures_answered >= 2
    assert tried == [ids[0]]
    receivers["store"].fail_with = None
    await _settled(hub, 10)
    got = [e["id"] for e in receivers["store"].received if e["type"] == "link.revoked"]
    assert list(dict.fromkeys(got)) == ids  # in order (at least once: a copy may come again)

    consumer = AIOKafkaConsumer(
        hub.settings.kafka_topic_prefix + (store.topic or ""),
        bootstrap_servers=hub.settings.kafka_bootstrap_servers,
        group_id="store-notices",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **group_timeouts(hub.settings),
    )
    await consumer.start()
    on_topic: list[str] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(set(on_topic)) < len(ids):
            assert asyncio.get_running_loop().time() < deadline, on_topic
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    event = json.loads(message.value)
                    if event["type"] != "link.revoked":
                        continue
                    assert message.key.decode() == ann
                    assert dict(message.headers)["webhook-id"].decode() == event["id"]
                    service_event.validate_python(event)
                    on_topic.append(event["id"])
    finally:
        await consumer.stop()
    assert list(dict.fromkeys(on_topic)) == ids


@pytest.mark.e2e
@PRODUCTION_TOPOLOGY
class TestStandaloneWorker:
    """``onesignin worker`` in its own process delivers notices the hub wrote."""

    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        # A lease that no stall outlasts: the test counts one delivery.
        return settings_overrides | {"sync_in_process": False, "sync_lease": 30.0}

    async def test_the_worker_process_delivers_the_notice(
        self, hub: Hub, browser: Browser, receivers: Receivers, tmp_path: Path
    ) -> None:
        store = await add_member(hub, receivers, "store")
        await hub.add_user(verified=True)
        await link(store, browser)
        ann = await _sub(hub)
        await _unlink(browser, store)
        worker = SyncProcess("worker", hub, tmp_path)
        await worker.start()
        try:
            event = await receivers.wait_for_event("store", "link.revoked", ann)
            assert event["_headers"]["webhook-id"] == event["id"]
            await _settled(hub, 1)
            assert (
                await worker.metric(
                    'onesignin_sync_notices_total{channel="webhook",result="ok"}'
                )
                == 1
            )
        finally:
            await worker.stop()
