"""What the sync worker sends to a service's webhook goes where the outbound policy allows and
reads no more of the answer than a few kilobytes: a webhook answering a gzip bomb or a body that
never ends is delivered all the same, without the worker taking it in; a webhook whose address
is loopback, private or otherwise not public is refused before any connection, and the service
reads plainly why in its sync status. A refused address is a failure like any other: retried,
then given up."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import aiohttp
import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from identity import notices, outbound
from identity.accounts.store import find_by_sub
from identity.appkeys import DB
from identity.db.models import Notice, Service
from schemas.events import LinkRevoked, LinkRevokedData
from sync import webhooks
from sync.runtime import TASKS
from tests.hostile import IN_FLIGHT_BOUND, HostileEndpoint, Listener
from tests.support import Hub, RelyingParty
from tests.sync.conftest import FAST_SYNC, add_member
from tests.sync.helpers import add_people, link_directly, recorded
from tests.sync.receivers import Receivers


@pytest.fixture
def allowed_networks() -> list[str]:
    """The hub's ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS (a test parametrizes it to allow loopback)."""
    return []


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any], allowed_networks: list[str]) -> dict[str, Any]:
    # A delivery gives up after failing for a second (retries come at 0.2, 0.4, 0.8 s).
    return FAST_SYNC | kafka_settings | {"outbound_allowed_networks": allowed_networks, "sync_give_up_after": 1.0}


async def _linked(hub: Hub, client_id: str) -> tuple[str, int]:
    """A person linked to the service (its worker then sends a snapshot); their sub and version."""
    [sub] = await add_people(hub, 1)
    await link_directly(hub, [sub], client_id)
    async with hub.app[DB]() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        return sub, account.version


async def _notice(hub: Hub, client_id: str, sub: str) -> str:
    """A ``link.revoked`` notice queued for the service's webhook; its id."""
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == client_id))
        assert service is not None
        now = notices.timestamp()
        notice = LinkRevoked(id=notices.new_notice_id(), timestamp=now, data=LinkRevokedData(sub=sub, revoked_at=now))
        notices.add(db, service, None, sub, notice)
    notices.wake(hub.app)
    return notice.id


async def _notice_row(hub: Hub, message_id: str, settled: Any, timeout: float = 30.0) -> Notice:
    """Wait until the notice's row satisfies ``settled``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with hub.app[DB]() as db:
            row = await db.scalar(select(Notice).where(Notice.message_id == message_id))
        if row is not None and settled(row):
            return row
        assert asyncio.get_running_loop().time() < deadline, row and (row.state, row.attempts, row.last_error)
        await asyncio.sleep(0.05)


async def _status(hub: Hub, rp: RelyingParty, **params: str) -> dict[str, Any]:
    token = (await rp.post("/token", {"grant_type": "client_credentials", "scope": "openid"})).json()["access_token"]
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        response = await http.get("/api/v1/sync/status", params=params, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("allowed_networks", [["127.0.0.0/8"]])
@pytest.mark.parametrize("body", ["endless", "gzip"])
async def test_a_webhook_answer_is_read_a_few_kilobytes_in(hub: Hub, body: Literal["endless", "gzip"]) -> None:
    async with HostileEndpoint(body) as endpoint:
        service = await hub.add_service(name="Store", webhook_url=endpoint.url)
        sub, version = await _linked(hub, service.client_id)
        # Delivered: the 200 is what counts, the rest of the answer is not waited for.
        await recorded(hub, service.client_id, sub, version)
        attempt = await endpoint.first()
        assert attempt.headers["accept-encoding"] == "identity"
        assert attempt.headers["webhook-id"]
        # The worker closed the connection with the answer still coming, having let through no
        # more than its buffers hold (a worker that read on would take ENDLESS_CAP).
        assert attempt.written <= IN_FLIGHT_BOUND
        if body == "endless":
            assert attempt.cut_off

        # Notices go the same way.
        notice = await _notice(hub, service.client_id, sub)
        sent = await _notice_row(hub, notice, lambda row: row.state != "pending")
        assert (sent.state, sent.last_error) == ("delivered", None)
        assert len(endpoint.attempts) == 2
        second = endpoint.attempts[1]
        await asyncio.wait_for(second.closed.wait(), 30)
        assert second.headers["accept-encoding"] == "identity" and second.written <= IN_FLIGHT_BOUND


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_webhook_at_a_loopback_address_is_refused_without_a_connection(hub: Hub, host: str) -> None:
    async with Listener() as listener:
        service = await hub.add_service(name="Store", webhook_url=listener.url(host))
        rp = RelyingParty(hub, service.client_id, service.client_secret)
        sub, version = await _linked(hub, service.client_id)

        # The delivery fails, is retried, and gives up like any other failing delivery.
        deadline = asyncio.get_running_loop().time() + 30
        while (status := await _status(hub, rp))["dead_letters"] < 1:
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.1)
        # What the service reads says plainly that the address is not allowed, and the setting.
        assert status["webhook"]["state"] in ("failing", "quarantined")
        assert status["webhook"]["last_error"] == webhooks.ADDRESS_NOT_ALLOWED
        assert "ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS" in webhooks.ADDRESS_NOT_ALLOWED
        one = (await _status(hub, rp, sub=sub))["channels"]["webhook"]
        assert one["state"] == "dead" and one["delivered_version"] < version
        assert one["attempts"] >= 2 and one["last_error"] == webhooks.ADDRESS_NOT_ALLOWED

        # A notice to the same address fails the same way.
        notice = await _notice(hub, service.client_id, sub)
        failed = await _notice_row(hub, notice, lambda row: row.attempts >= 1)
        assert failed.last_error == webhooks.ADDRESS_NOT_ALLOWED

        # Nothing ever connected, and the worker runs on.
        assert await listener.connections_before_now() == 0
        assert not [name for name, task in hub.app[TASKS].items() if task.done()]


@pytest.mark.parametrize("allowed_networks", [["127.0.0.0/8"]])
async def test_a_webhook_on_an_allowed_network_is_delivered(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store")
    sub, version = await _linked(hub, store.rp.client_id)
    await receivers.wait_for("store", sub, version)
    await recorded(hub, store.rp.client_id, sub, version)
    assert (await _status(hub, store.rp))["webhook"]["state"] == "healthy"


@pytest.mark.parametrize("allowed_networks", [["127.0.0.0/8"]])
async def test_a_cookie_a_service_sets_is_never_sent_back(hub: Hub) -> None:
    """Calls to services are stateless: an answer's Set-Cookie is not kept, so the next call
    (a delivery, a token request, a push) carries no Cookie header of the service's making."""
    cookies: list[str | None] = []

    async def hook(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("Cookie"))
        response = web.Response(status=204)
        response.set_cookie("session", "kept-by-the-caller", path="/")
        return response

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with TestServer(app, host="127.0.0.1") as server, outbound.client(hub.settings, user_agent="test") as http:
        for _ in range(2):
            # By name: a client keeps no cookies from a bare IP address anyway.
            url = f"http://localhost:{server.port}/hook"
            answer = await outbound.post(http, url, data=b"{}", timeout=aiohttp.ClientTimeout(total=5))
            assert answer.status == 204 and "session=kept-by-the-caller" in answer.headers.get("Set-Cookie", "")
    assert cookies == [None, None]
