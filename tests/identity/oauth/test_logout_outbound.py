"""Back-channel logout goes through the hub's outbound policy: a logout endpoint answering a gzip
bomb or a body that never ends gets its logout token, and the hub reads no more than a few
kilobytes of the answer; one whose address is loopback (or otherwise not public) gets nothing,
and signing out still works."""

from __future__ import annotations

import logging
from typing import Any, Literal

import pytest

from identity.appkeys import HTTP
from identity.oidc.logout import LogoutNotice, send_notices
from tests.hostile import IN_FLIGHT_BOUND, HostileEndpoint, Listener
from tests.support import Browser, Hub, RelyingParty, sign_in_through


@pytest.fixture
def allowed_networks() -> list[str]:
    """The hub's ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS (a test parametrizes it to allow loopback)."""
    return []


@pytest.fixture
def settings_overrides(allowed_networks: list[str]) -> dict[str, Any]:
    return {"outbound_allowed_networks": allowed_networks}


async def _signed_in_then_out(hub: Hub, browser: Browser, backchannel_logout_uri: str) -> str:
    """A person signs in to a service with that logout endpoint, then signs out at the hub."""
    service = await hub.add_service(backchannel_logout_uri=backchannel_logout_uri)
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await sign_in_through(rp, browser)
    page = await browser.go("/account")
    done = await browser.submit(page, "/sign-out")
    assert done.status_code == 200 and "You are signed out" in done.text
    return service.client_id


@pytest.mark.parametrize("allowed_networks", [["127.0.0.0/8"]])
@pytest.mark.parametrize("body", ["endless", "gzip"])
async def test_a_logout_answer_is_read_a_few_kilobytes_in(hub: Hub, browser: Browser, body: Literal["endless", "gzip"]) -> None:
    async with HostileEndpoint(body) as endpoint:
        await _signed_in_then_out(hub, browser, endpoint.url)
        attempt = await endpoint.first()
        assert attempt.headers["content-type"].startswith("application/x-www-form-urlencoded")
        assert attempt.headers["accept-encoding"] == "identity"
        # The hub closed the connection with the answer still coming, having let through no more
        # than its buffers hold.
        assert attempt.written <= IN_FLIGHT_BOUND
        if body == "endless":
            assert attempt.cut_off

        # And the 200 counts as acknowledged.
        sent = await send_notices(hub.app[HTTP], [LogoutNotice("store", endpoint.url, "a.logout.token")], timeout=30)
        assert sent == {"store": True}
        assert endpoint.attempts[1].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_back_channel_logout_to_a_loopback_address_is_not_sent(
    hub: Hub, browser: Browser, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Listener() as listener:
        with caplog.at_level(logging.WARNING, logger="identity.oidc.logout"):
            client_id = await _signed_in_then_out(hub, browser, listener.url(host))
            sent = await send_notices(hub.app[HTTP], [LogoutNotice(client_id, listener.url(host), "a.logout.token")], timeout=30)
        assert sent == {client_id: False}
        assert await listener.connections_before_now() == 0
    refusals = [r.getMessage() for r in caplog.records if "not sent: its address is not allowed" in r.getMessage()]
    assert len(refusals) == 2 and all(client_id in m and "ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS" in m for m in refusals)
