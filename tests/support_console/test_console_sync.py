"""The console's actions through the real sync pipeline (embedded broker, relay, worker) to a
member service's webhook: a resync sends a fresh snapshot, a rights request opened by an agent
reaches the service it is addressed to, and an edit arrives with origin ``support``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import Browser, Hub
from tests.support_console.console import console_for
from tests.sync.conftest import (  # noqa: F401
    FAST_SYNC,
    add_member,
    broker,
    kafka_settings,
    link,
    receivers,
)
from tests.sync.helpers import recorded
from tests.sync.receivers import Receivers


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    return FAST_SYNC | kafka_settings


async def test_resync_rights_request_and_edit_reach_the_services_webhook(hub: Hub, receivers: Receivers) -> None:  # noqa: F811
    ann = await hub.add_user(email="ann@example.com", verified=True)
    store = await add_member(hub, receivers, "store")
    person = Browser(hub)
    console = await console_for(hub)
    path = f"/support/people/{ann}"
    try:
        await link(store, person)
        await receivers.wait_for("store", ann, 1)
        await recorded(hub, store.rp.client_id, ann, 1)  # the link's own snapshot is settled

        page = await console.get(path)
        done = await console.submit(page, f"{path}/resync", reason="Service lost its copy")
        assert "A fresh copy of the profile is queued" in done.text
        for _ in range(300):
            resent = [e for e in receivers["store"].received if e["type"] == "profile.snapshot" and e["data"]["reason"] == "resync"]
            if resent:
                break
            await asyncio.sleep(0.1)
        assert resent and resent[-1]["data"]["profile"]["given_name"] == "Ann"

        done = await console.submit(page, f"{path}/rights-requests", type="access", target=store.rp.client_id, details="A copy, please")
        assert "The rights request is open" in done.text
        notice = await receivers.wait_for_event("store", "rights.requested", ann)
        assert notice["data"]["opened_by"] == "support" and notice["data"]["details"] == "A copy, please"

        done = await console.submit(page, f"{path}/edit", given_name="Anna", reason="Typo on the phone")
        assert "The details are saved" in done.text
        updated = await receivers.wait_for("store", ann, 2)
    finally:
        await console.aclose()
        await person.aclose()
    assert updated["profile"]["given_name"] == "Anna"
    event = next(e for e in receivers["store"].received if e["type"] == "profile.updated")
    assert event["data"]["origin"]["channel"] == "support" and "given_name" in event["data"]["changed"]
