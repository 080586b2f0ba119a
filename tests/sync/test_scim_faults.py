"""The SCIM channel's failures, played step by step through the worker's own engine against a real
SCIM server (``scim2-server``) behind a proxy that can fail in its place: a 429 with
``Retry-After``, a 5xx or a server that is down are retried like a webhook's failures, the retry
sends the newest state, the service's sync status shows the SCIM server failing, quarantined and
healthy again, and a delivery failing past the give-up time becomes a dead letter."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from identity import admin, deliveries
from identity.accounts import children, link_lifecycle
from identity.appkeys import CIPHER, DB
from identity.db.models import Account, DeadLetter, Delivery, Link, Service, utcnow
from schemas.events import LinkCreated, ProfileChanged
from sync import fanout
from sync.engine import Engine
from tests.support import Hub
from tests.sync.helpers import change, engines, link_directly
from tests.sync.scim_servers import CLIENT_SECRET, TOKEN, FaultyProxy, ScimServer, scim_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The test plays the worker itself; no broker.
    return {"sync_in_process": False, "sync_retry_schedule": [5.0, 30.0]}


@pytest.fixture(scope="module")
def scim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimServer]:
    yield from scim_server(Path(tmp_path_factory.mktemp("scim")), ("forum",))


@pytest.fixture
async def proxy(scim: ScimServer) -> AsyncIterator[FaultyProxy]:
    running = FaultyProxy(scim.base)
    await running.start()
    yield running
    await running.close()


async def _row(hub: Hub) -> Delivery:
    async with hub.app[DB]() as db:
        row = await db.scalar(select(Delivery).where(Delivery.channel == "scim"))
        assert row is not None
        return row


async def _status(hub: Hub) -> dict[str, Any]:
    async with hub.app[DB]() as db:
        service = await db.scalar(select(Service))
        assert service is not None
        status = await deliveries.service_status(db, service)
        assert status is not None
        return status


async def _attempt(hub: Hub, deliverer: Engine) -> None:
    """One claim, its sends and their outcomes recorded, as the worker's loops do."""
    await deliverer.endpoints.refresh(force=True)
    jobs = await deliverer.claim(10)
    assert len(jobs) == 1
    for job in jobs:
        await deliverer.send(job)
    await deliverer.flush()


async def _due_now(hub: Hub, **values: Any) -> None:
    """As if the retry's time had come."""
    async with hub.app[DB].begin() as db:
        await db.execute(update(Delivery).where(Delivery.channel == "scim").values(next_attempt_at=utcnow(), **values))


async def _record(hub: Hub, sub: str, event: LinkCreated | ProfileChanged) -> None:
    async with hub.app[DB].begin() as db:
        await fanout.record(db, [event], echo_suppression=True)


async def test_failures_are_retried_like_a_webhooks_and_the_retry_sends_the_newest_state(hub: Hub, scim: ScimServer, proxy: FaultyProxy) -> None:
    forum = await hub.add_service(name="Forum", scim_base_url=f"{proxy.base}/forum", scim_token=TOKEN)
    # One server serves the module: each test's person has an address of their own (userName).
    email = f"bo.{uuid.uuid4().hex[:8]}@example.com"
    sub = await hub.add_user(email=email, verified=True, given_name="Bo", family_name="Example")
    await link_directly(hub, [sub], forum.client_id, scope="openid profile email")
    await _record(hub, sub, LinkCreated(id="l1", sub=sub, client_id=forum.client_id, version=1, occurred_at=utcnow()))
    assert (await _status(hub))["scim"]["state"] == "healthy"

    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]

        # 429 with Retry-After: not retried sooner than asked.
        proxy.status, proxy.headers = 429, {"Retry-After": "120"}
        before = utcnow()
        await _attempt(hub, deliverer)
        row = await _row(hub)
        assert row.attempts == 1 and "429" in (row.last_error or "")
        assert row.next_attempt_at.replace(tzinfo=dt.UTC) >= before + dt.timedelta(seconds=119)
        status = await _status(hub)
        assert status["scim"]["state"] == "failing" and "429" in status["scim"]["last_error"]
        assert status["backlog"]["scim"]["pending"] == 1

        # A 5xx: retried on the schedule.
        proxy.status, proxy.headers = 500, {}
        await _due_now(hub)
        before = utcnow()
        await _attempt(hub, deliverer)
        row = await _row(hub)
        assert row.attempts == 2 and "HTTP 500" in (row.last_error or "")
        assert before + dt.timedelta(seconds=29) <= row.next_attempt_at.replace(tzinfo=dt.UTC) <= utcnow() + dt.timedelta(seconds=31)

        # Meanwhile the person changes their name: the retry carries the newest state.
        version = await change(hub, sub, given_name="Bob")
        await _record(hub, sub, ProfileChanged(id="c1", sub=sub, version=version, changed=["given_name", "name"], channel="support", occurred_at=utcnow()))

        # The server down: retried too; failing for long, the SCIM server is quarantined.
        await proxy.down()
        async with hub.app[DB].begin() as db:
            await db.execute(update(Service).values(scim_failing_since=utcnow() - dt.timedelta(hours=2)))
        await _due_now(hub)
        await _attempt(hub, deliverer)
        row = await _row(hub)
        assert row.attempts == 3 and "SCIM server" in (row.last_error or "")
        assert (await _status(hub))["scim"]["state"] == "quarantined"
        assert proxy.requests and await scim.users("forum", sub) == []  # nothing got through

        # Back up: delivered, the newest state, and the SCIM server healthy again.
        proxy.status = None
        await proxy.start()
        await _due_now(hub)
        await _attempt(hub, deliverer)
        row = await _row(hub)
        assert row.delivered_version == row.wanted_version and row.attempts == 0 and row.last_error is None
        user = await scim.user("forum", sub)
        assert user["name"]["givenName"] == "Bob" and user["emails"] == [{"value": email, "primary": True}]
        assert user["userName"] == email and user["active"] is True
        status = await _status(hub)
        assert status["scim"]["state"] == "healthy" and status["backlog"]["scim"]["pending"] == 0
        async with hub.app[DB]() as db:
            assert await db.scalar(select(Link.scim_id)) == user["id"]

        # Failing past the give-up time: a dead letter, listed with the webhook's.
        version = await change(hub, sub, family_name="Other")
        await _record(hub, sub, ProfileChanged(id="c2", sub=sub, version=version, changed=["family_name", "name"], channel="support", occurred_at=utcnow()))
        proxy.status = 503
        await _due_now(hub, failing_since=utcnow() - dt.timedelta(days=4))
        await _attempt(hub, deliverer)
        row = await _row(hub)
        assert row.state == "dead"
        async with hub.app[DB]() as db:
            [letter] = (await db.scalars(select(DeadLetter))).all()
            assert letter.channel == "scim"
            listed = await deliveries.dead_letters(db, client_id=forum.client_id)
        assert [d["channel"] for d in listed] == ["scim"]
        assert (await scim.user("forum", sub))["name"].get("familyName") == "Example"  # the server kept what it had
        async with hub.app[DB]() as db:
            assert (await db.scalar(select(Account.version).where(Account.sub == sub))) == version


async def test_a_token_from_the_services_token_endpoint_is_kept_until_the_scim_server_refuses_it(hub: Hub, scim: ScimServer, proxy: FaultyProxy) -> None:
    forum = await hub.add_service(
        name="Forum", scim_base_url=f"{proxy.base}/forum", scim_token=CLIENT_SECRET, scim_token_url=f"{proxy.base}/token", scim_client_id="hub"
    )
    sub = await hub.add_user(email=f"cy.{uuid.uuid4().hex[:8]}@example.com", verified=True, given_name="Cy")
    await link_directly(hub, [sub], forum.client_id, scope="openid profile")
    await _record(hub, sub, LinkCreated(id="l1", sub=sub, client_id=forum.client_id, version=1, occurred_at=utcnow()))

    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]
        await _attempt(hub, deliverer)
        assert (await scim.user("forum", sub))["name"]["givenName"] == "Cy"
        assert proxy.tokens_issued == 1

        # Kept for the next request.
        version = await change(hub, sub, given_name="Cyd")
        await _record(hub, sub, ProfileChanged(id="c1", sub=sub, version=version, changed=["given_name", "name"], channel="support", occurred_at=utcnow()))
        await _attempt(hub, deliverer)
        assert (await scim.user("forum", sub))["name"]["givenName"] == "Cyd" and proxy.tokens_issued == 1

        # Refused (401): retried with a new token.
        version = await change(hub, sub, given_name="Cydney")
        await _record(hub, sub, ProfileChanged(id="c2", sub=sub, version=version, changed=["given_name", "name"], channel="support", occurred_at=utcnow()))
        proxy.status = 401
        await _attempt(hub, deliverer)
        assert "401" in ((await _row(hub)).last_error or "")
        proxy.status = None
        await _due_now(hub)
        await _attempt(hub, deliverer)
        assert (await scim.user("forum", sub))["name"]["givenName"] == "Cydney" and proxy.tokens_issued == 2


async def test_a_service_given_scim_later_provisions_its_linked_people_on_resync(hub: Hub, scim: ScimServer, proxy: FaultyProxy) -> None:
    wiki = await hub.add_service(name="Wiki")
    sub = await hub.add_user(email=f"di.{uuid.uuid4().hex[:8]}@example.com", verified=True, given_name="Di")
    await link_directly(hub, [sub], wiki.client_id, scope="openid profile")
    async with hub.app[DB].begin() as db:
        await admin.update_service_sync(db, hub.app[CIPHER], wiki.client_id, scim_base_url=f"{proxy.base}/forum", scim_token=TOKEN)
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == wiki.client_id))
        assert service is not None
        assert await deliveries.resync(db, service, rate=1000.0) == 1
    async with aiohttp.ClientSession() as http:
        await _attempt(hub, engines(hub, http)[0])
    user = await scim.user("forum", sub)
    assert user["active"] is True and user["name"]["givenName"] == "Di" and user["userName"] == sub


async def test_a_cancellation_and_a_restriction_deactivate_and_lifting_it_activates_again(hub: Hub, scim: ScimServer, proxy: FaultyProxy) -> None:
    forum = await hub.add_service(name="Forum", scim_base_url=f"{proxy.base}/forum", scim_token=TOKEN)
    sub = await hub.add_user(email=f"ed.{uuid.uuid4().hex[:8]}@example.com", verified=True, given_name="Ed")
    await link_directly(hub, [sub], forum.client_id, scope="openid profile")
    await _record(hub, sub, LinkCreated(id="l1", sub=sub, client_id=forum.client_id, version=1, occurred_at=utcnow()))

    async def notices_sent(notifier: Engine) -> None:
        await notifier.endpoints.refresh(force=True)
        for job in await notifier.claim(10):
            await notifier.send(job)
        await notifier.flush()

    async with aiohttp.ClientSession() as http:
        deliverer, notifier = engines(hub, http)
        await _attempt(hub, deliverer)
        assert (await scim.user("forum", sub))["active"] is True

        # The person is restricted (a child without a guardian's consent): deactivated.
        async with hub.app[DB].begin() as db:
            account = await db.scalar(select(Account).where(Account.sub == sub))
            assert account is not None
            await children.restrict(db, account, children.ChildPolicy(), utcnow())
        await notices_sent(notifier)
        assert (await scim.user("forum", sub))["active"] is False

        # Lifted: the service's snapshot makes the User active again.
        async with hub.app[DB].begin() as db:
            account = await db.scalar(select(Account).where(Account.sub == sub))
            assert account is not None
            await children.lift(db, account, utcnow(), by_guardian=True)
        await _record(hub, sub, LinkCreated(id="l2", sub=sub, client_id=forum.client_id, version=1, occurred_at=utcnow()))
        await notices_sent(notifier)  # the restriction_lifted notice has no SCIM row
        await _attempt(hub, deliverer)
        assert (await scim.user("forum", sub))["active"] is True

        # The service reports it cancelled its own account: deactivated.
        async with hub.app[DB].begin() as db:
            service = await db.scalar(select(Service).where(Service.client_id == forum.client_id))
            assert service is not None
            assert await link_lifecycle.cancel(db, None, hub.settings.issuer, service, sub) is not None  # type: ignore[arg-type]
        await notices_sent(notifier)
        assert (await scim.user("forum", sub))["active"] is False
