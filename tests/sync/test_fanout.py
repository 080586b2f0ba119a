"""A change made anywhere reaches every linked service, and only what each may see."""

from __future__ import annotations

from tests.support import Browser, Hub
from tests.sync.conftest import add_member, link, patch_me
from tests.sync.helpers import recorded
from tests.sync.receivers import Receivers


async def test_change_through_one_service_reaches_the_other_linked_services_only(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    sub = await hub.add_user(verified=True)
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum")
    portal = await add_member(hub, receivers, "portal")
    await add_member(hub, receivers, "unlinked")
    token = await link(store, browser)
    for member in (forum, portal):
        await link(member, browser)
        # Linking sends the service a snapshot of what it may see.
        snapshot = await receivers.wait_for(member.name, sub, 1)
        assert snapshot["profile"]["given_name"] == "Ann"
        # Recorded too: a change made while it is in flight would go out as a snapshot.
        await recorded(hub, member.rp.client_id, sub, 1)

    response = await patch_me(hub, token["access_token"], {"given_name": "Anna"})
    assert response.status_code == 200, response.text
    version = response.json()["version"]
    assert response.json()["profile"]["name"] == "Anna Example"

    for name in ("forum", "portal"):
        data = await receivers.wait_for(name, sub, version)
        assert data["profile"]["given_name"] == "Anna"
        assert data["profile"]["name"] == "Anna Example"
        assert set(data["changed"]) == {"given_name", "name"}
        assert data["origin"] == {"channel": "service", "this_service": False}
    # The service that made the change is not sent its own change back (echo suppression),
    # and a service the person never linked learns nothing at all.
    assert all(d["data"]["version"] < version for d in receivers["store"].received)
    assert receivers["unlinked"].received == []
    assert receivers["store"].rejected == receivers["forum"].rejected == 0


async def test_a_service_never_sees_a_claim_outside_its_scopes(hub: Hub, browser: Browser, receivers: Receivers) -> None:
    sub = await hub.add_user(verified=True)
    narrow = await add_member(hub, receivers, "narrow", scope="openid profile")
    wide = await add_member(hub, receivers, "wide", scope="openid profile email phone marketing")
    await link(narrow, browser)
    token = await link(wide, browser)
    await receivers.wait_for("narrow", sub, 1)

    # Only claims the narrow service cannot see: it is told nothing.
    response = await patch_me(hub, token["access_token"], {"phone_number": "+447700900123", "marketing_news": True})
    assert response.status_code == 200, response.text
    phone_version = response.json()["version"]
    # Then one it can see.
    response = await patch_me(hub, token["access_token"], {"family_name": "Smith"})
    version = response.json()["version"]

    data = await receivers.wait_for("narrow", sub, version)
    assert data["profile"]["family_name"] == "Smith"
    for delivery in receivers["narrow"].received:
        profile = delivery["data"]["profile"]
        assert not {"email", "email_verified", "phone_number", "marketing_news", "address"} & set(profile), profile
        assert delivery["data"]["version"] != phone_version
    assert set(data["changed"]) <= {"family_name", "name", "given_name", "birthdate", "locale", "zoneinfo"}
