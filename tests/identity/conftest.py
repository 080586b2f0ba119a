"""Fixtures shared by the identity tests: a person's browser and a registered member service
whose relying party is authlib's own client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import Browser, Hub, RelyingParty


@pytest.fixture
async def browser(hub: Hub) -> AsyncIterator[Browser]:
    b = Browser(hub)
    yield b
    await b.aclose()


@pytest.fixture
async def rp(hub: Hub) -> RelyingParty:
    """The "Store" service, and Ann, a person with a verified address."""
    service = await hub.add_service()
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    return rp
