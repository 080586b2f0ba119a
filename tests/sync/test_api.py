"""The JSON API member services use: the person's profile, their own sync status and resync,
the service topic, and the machine-readable documentation."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
from aiokafka import AIOKafkaConsumer
from standardwebhooks.webhooks import Webhook

from identity.appkeys import SETTINGS
from sync.runtime import METRICS_URL
from tests.support import Browser, Hub
from tests.sync.conftest import add_member, link, patch_me, service_token
from tests.sync.helpers import group_timeouts, add_people, change, link_directly, settled
from tests.sync.receivers import Receivers


async def _get(hub: Hub, path: str, token: str | None = None, **params: str) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.get(path, headers=headers, params=params)


async def test_profile_read_and_change_with_lost_update_protection(hub: Hub, browser: Browser, receivers: Receivers) -> None:
    await hub.add_user(verified=True)
    store = await add_member(hub, receivers, "store", scope="openid profile email")
    token = (await link(store, browser))["access_token"]

    got = await _get(hub, "/api/v1/me", token)
    assert got.status_code == 200
    body = got.json()
    assert body["profile"]["given_name"] == "Ann" and body["profile"]["email"] == "ann@example.com"
    assert "phone_number" not in body["profile"]  # outside the granted scopes: absent, not null
    assert got.headers["etag"] == f'"{body["version"]}"'
    assert got.headers["cache-control"] == "no-store"

    changed = await patch_me(hub, token, {"locale": "fr-FR", "zoneinfo": "Europe/Paris"}, **{"If-Match": got.headers["etag"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == body["version"] + 1
    assert changed.json()["profile"]["locale"] == "fr-FR"

    # The same If-Match again: someone else's change came first, nothing is overwritten.
    stale = await patch_me(hub, token, {"locale": "de-DE"}, **{"If-Match": got.headers["etag"]})
    assert stale.status_code == 412
    assert stale.json()["version"] == body["version"] + 1
    assert (await _get(hub, "/api/v1/me", token)).json()["profile"]["locale"] == "fr-FR"

    # null clears a claim.
    cleared = await patch_me(hub, token, {"zoneinfo": None})
    assert cleared.status_code == 200 and cleared.json()["profile"]["zoneinfo"] is None


async def test_profile_changes_are_validated_field_by_field_and_need_the_scope(hub: Hub, browser: Browser, receivers: Receivers) -> None:
    await hub.add_user(verified=True)
    store = await add_member(hub, receivers, "store", scope="openid profile")
    token = (await link(store, browser))["access_token"]
    before = (await _get(hub, "/api/v1/me", token)).json()["version"]

    bad = await patch_me(
        hub, token, {"locale": "not a locale!", "birthdate": "2999-01-01", "colour": "blue", "marketing_competitions": 0.0}
    )
    assert bad.status_code == 422
    fields = {p["field"] for p in bad.json()["problems"]}
    assert fields == {"locale", "birthdate", "colour", "marketing_competitions"}  # a consent is true or false, not 0
    assert all(p["message"] for p in bad.json()["problems"])

    no_scope = await patch_me(hub, token, {"phone_number": "+447700900123"})
    assert no_scope.status_code == 403
    assert no_scope.json()["error"] == "insufficient_scope" and no_scope.json()["scope"] == "phone"
    assert 'error="insufficient_scope"' in no_scope.headers["www-authenticate"]

    email = await patch_me(hub, token, {"email": "other@example.com"})
    assert email.status_code == 422 and email.json()["problems"][0]["field"] == "email"

    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        headers = {"Authorization": f"Bearer {token}"}
        assert (await http.patch("/api/v1/me", content=b"{not json", headers=headers | {"Content-Type": "application/json"})).status_code == 400
        assert (await http.patch("/api/v1/me", content=b"[]", headers=headers | {"Content-Type": "application/json"})).status_code == 400
        assert (await http.patch("/api/v1/me", content=b"given_name=x", headers=headers | {"Content-Type": "text/plain"})).status_code == 415
        assert (await http.patch("/api/v1/me", json={"given_name": "X"}, headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await http.patch("/api/v1/me", json={"given_name": "X"})).status_code == 401
    # Nothing above changed anything.
    assert (await _get(hub, "/api/v1/me", token)).json()["version"] == before

    # A service's own client-credentials token is not a person's.
    assert (await _get(hub, "/api/v1/me", await service_token(store))).status_code == 401


async def test_sync_status_and_resync_for_the_service_itself(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum")
    subs = await add_people(hub, 3)
    await link_directly(hub, subs, store.rp.client_id)
    await link_directly(hub, subs[:1], forum.rp.client_id)
    for sub in subs:
        await receivers.wait_for("store", sub, 1)
    version = await change(hub, subs[0], given_name="Zed")
    await receivers.wait_for("store", subs[0], version)

    token = await service_token(store)
    # Outcomes are recorded just after the receiver answers (in batches): the backlog empties then.
    await settled(hub, store.rp.client_id)
    overall = await _get(hub, "/api/v1/sync/status", token)
    assert overall.status_code == 200, overall.text
    body = overall.json()
    assert body["client_id"] == store.rp.client_id
    assert body["webhook"]["state"] == "healthy" and body["dead_letters"] == 0
    assert body["backlog"]["webhook"]["pending"] == 0

    one = await _get(hub, "/api/v1/sync/status", token, sub=subs[0])
    assert one.status_code == 200
    assert one.json()["current_version"] == version
    assert one.json()["channels"]["webhook"]["delivered_version"] == version

    # A person linked to another service only, and an unknown sub, look exactly the same.
    other = await add_people(hub, 1)
    await link_directly(hub, other, forum.rp.client_id)
    unlinked = await _get(hub, "/api/v1/sync/status", token, sub=other[0])
    unknown = await _get(hub, "/api/v1/sync/status", token, sub="no-such-person")
    assert unlinked.status_code == unknown.status_code == 404
    assert unlinked.json() == unknown.json()

    before = len(receivers["store"].received)
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        replay = await http.post("/api/v1/sync/resync", headers={"Authorization": f"Bearer {token}", "X-Request-Id": "req-resync-0001"})
    assert replay.status_code == 202 and replay.json()["queued"] == 3
    for sub in subs:
        await receivers.wait_for("store", sub, 1)
    for _ in range(200):
        snapshots = [d for d in receivers["store"].received[before:] if d["type"] == "profile.snapshot"]
        if len(snapshots) == 3:
            break
        await asyncio.sleep(0.05)
    assert {d["data"]["sub"] for d in snapshots} == set(subs)
    assert all(d["data"]["reason"] == "resync" for d in snapshots)
    # Each carries the id of the request that asked for the replay.
    assert {d["_headers"]["x-request-id"] for d in snapshots} == {"req-resync-0001"}
    # Forum's person who is not linked to the store was not replayed to the store.
    assert other[0] not in {d["data"]["sub"] for d in receivers["store"].received}

    # A person's token cannot read a service's sync state.
    assert (await _get(hub, "/api/v1/sync/status")).status_code == 401


async def test_service_topic_carries_the_same_deliveries(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store", topic=True)
    assert store.topic and store.topic.endswith(".v1")
    subs = await add_people(hub, 2)
    await link_directly(hub, subs, store.rp.client_id)
    version = await change(hub, subs[1], family_name="Topical")
    await receivers.wait_for("store", subs[1], version)

    consumer = AIOKafkaConsumer(
        hub.settings.kafka_topic_prefix + store.topic,
        bootstrap_servers=hub.settings.kafka_bootstrap_servers,
        group_id="store-reader",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **group_timeouts(hub.settings),
    )
    await consumer.start()
    latest: dict[str, dict] = {}
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while latest.get(subs[1], {}).get("version", 0) < version or set(latest) != set(subs):
            assert asyncio.get_running_loop().time() < deadline, latest
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    event = json.loads(message.value)
                    assert message.key.decode() == event["data"]["sub"]
                    assert dict(message.headers)["webhook-id"].decode() == event["id"]
                    if event["data"]["version"] > latest.get(event["data"]["sub"], {}).get("version", 0):
                        latest[event["data"]["sub"]] = event["data"]
    finally:
        await consumer.stop()
    assert latest[subs[1]]["profile"]["family_name"] == "Topical"
    assert set(latest) == set(subs)


async def test_schemas_asyncapi_and_metrics_are_published(hub: Hub, receivers: Receivers) -> None:
    index = await _get(hub, "/schemas/")
    assert index.status_code == 200
    assert {"profile.updated", "profile.snapshot"} <= set(index.json())
    schema = (await _get(hub, "/schemas/profile.updated.json")).json()
    assert schema["properties"]["type"]["const"] == "profile.updated"
    assert (await _get(hub, "/schemas/nothing.json")).status_code == 404

    doc = (await _get(hub, "/asyncapi.json")).json()
    assert doc["asyncapi"].startswith("3.")
    assert doc["channels"]["serviceTopic"]["address"] == "onesignin.service.{client_id}.v1"
    assert "ProfileUpdated" in doc["components"]["schemas"]

    assert (await _get(hub, "/metrics")).status_code == 404  # not on the public port
    async with httpx2.AsyncClient(timeout=30) as http:
        metrics = (await http.get(hub.app[METRICS_URL])).text
    for name in (
        "onesignin_outbox_lag_seconds",
        "onesignin_sync_deliveries_total",
        "onesignin_sync_delivery_latency_seconds_bucket",
        "onesignin_sync_quarantined_endpoints",
    ):
        assert name in metrics, name


async def test_a_delivery_verifies_with_the_standard_webhooks_library(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store")
    subs = await add_people(hub, 1)
    await link_directly(hub, subs, store.rp.client_id)
    await receivers.wait_for("store", subs[0], 1)
    delivery = receivers["store"].received[0]
    headers = delivery["_headers"]
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["webhook-id"] == delivery["id"]
    assert store.webhook_secret and store.webhook_secret.startswith("whsec_")
    body = json.dumps({k: v for k, v in delivery.items() if k != "_headers"})
    # A body that is not the signed one fails verification.
    try:
        Webhook(store.webhook_secret).verify(body + " ", headers)
    except Exception as exc:  # noqa: BLE001
        assert type(exc).__name__ == "WebhookVerificationError"
    else:
        raise AssertionError("a changed body verified")


async def test_one_resync_at_a_time(hub: Hub, receivers: Receivers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.app[SETTINGS], "sync_resync_rate", 0.5)  # 4 people: paced over 6 s
    store = await add_member(hub, receivers, "store")
    subs = await add_people(hub, 4)
    await link_directly(hub, subs, store.rp.client_id)
    for sub in subs:
        await receivers.wait_for("store", sub, 1)
    token = await service_token(store)
    # The link snapshots count as a resync in flight until their outcomes are recorded, a
    # moment after the receiver has them: the service's status says when.
    await settled(hub, store.rp.client_id)
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        status = (await http.get("/api/v1/sync/status", headers={"Authorization": f"Bearer {token}"})).json()
        assert status["backlog"]["webhook"]["pending"] == 0, status
        first = await http.post("/api/v1/sync/resync", headers={"Authorization": f"Bearer {token}"})
        assert first.status_code == 202 and first.json() == {"queued": 4, "rate_per_second": 0.5}
        again = await http.post("/api/v1/sync/resync", headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 429, again.text
        assert again.json()["error"] == "resync_in_progress"
        assert 1 <= int(again.headers["Retry-After"]) <= 7
        # Once the last paced snapshot has gone out, the service may ask again.
        for _ in range(20):
            await asyncio.sleep(int(again.headers["Retry-After"]))
            again = await http.post("/api/v1/sync/resync", headers={"Authorization": f"Bearer {token}"})
            if again.status_code != 429:
                break
        assert again.status_code == 202, again.text
    replayed: set[str] = set()
    for _ in range(600):
        replayed = {d["data"]["sub"] for d in receivers["store"].received if d["type"] == "profile.snapshot" and d["data"]["reason"] == "resync"}
        if replayed == set(subs):
            break
        await asyncio.sleep(0.05)
    assert replayed == set(subs)
