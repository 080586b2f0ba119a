"""Sync fixtures: a real Kafka-protocol broker (the embedded Tansu, one per test, or the Apache
Kafka named by ``ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS`` with a topic prefix per test), the hub
running its relay and worker, and webhook receivers over real HTTP."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from sync.broker import EmbeddedBroker
from tests.support import Browser, Hub, RelyingParty, sign_in_through
from tests.sync.receivers import Receivers

EXTERNAL_KAFKA = os.environ.get("ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS")
# Retries come fast in tests; the production schedule is minutes to days.
FAST_SYNC = {
    "sync_in_process": True,
    "sync_retry_schedule": [0.2, 0.4, 0.8],
    "relay_poll_interval": 0.02,
    "kafka_profile_partitions": 4,
    "kafka_service_partitions": 1,
    # A crashed worker's deliveries are taken over after the lease.
    "webhook_timeout": 2.0,
    "sync_lease": 3.0,
}


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker | None]:
    if EXTERNAL_KAFKA:
        yield None
        return
    async with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def kafka_settings(broker: EmbeddedBroker | None) -> dict[str, Any]:
    return {
        "kafka_bootstrap_servers": EXTERNAL_KAFKA or broker.bootstrap,  # type: ignore[union-attr]
        "kafka_topic_prefix": f"t{uuid.uuid4().hex[:10]}." if EXTERNAL_KAFKA else "",
        # The embedded broker has no idempotent producers.
        "kafka_enable_idempotence": bool(EXTERNAL_KAFKA),
        # The embedded broker holds a worker joining its group for half the session timeout:
        # 1.5 s instead of 5. (Apache Kafka takes no less than 6 s.)
        "kafka_session_timeout": 6.0 if EXTERNAL_KAFKA else 3.0,
    }


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:
    return FAST_SYNC | kafka_settings


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    running = Receivers()
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def browser(hub: Hub) -> AsyncIterator[Browser]:
    b = Browser(hub)
    yield b
    await b.aclose()


@dataclass
class Member:
    """A member service with a webhook at the receivers, and its OAuth client."""

    name: str
    rp: RelyingParty
    webhook_secret: str | None
    topic: str | None


async def add_member(
    hub: Hub, receivers: Receivers, name: str, *, scope: str = "openid profile email offline_access", webhook: bool = True, topic: bool = False
) -> Member:
    service = await hub.add_service(
        name=name, webhook_url=receivers.url(name) if webhook else None, kafka_topic=topic
    )
    if webhook:
        receivers[name].secret = service.webhook_secret
    rp = RelyingParty(hub, service.client_id, service.client_secret, scope=scope)
    await rp.discover()
    return Member(name, rp, service.webhook_secret, service.topic)


async def link(member: Member, browser: Browser) -> dict[str, Any]:
    """The person signs in to the service through the hub (the code flow): that links it."""
    token, _ = await sign_in_through(member.rp, browser)
    return token


async def patch_me(hub: Hub, access_token: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.patch("/api/v1/me", json=body, headers={"Authorization": f"Bearer {access_token}", **headers})


async def service_token(member: Member) -> str:
    response = await member.rp.post("/token", {"grant_type": "client_credentials", "scope": "openid"})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]
