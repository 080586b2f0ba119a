"""SCIM provisioning against a real SCIM server (``scim2-server`` as its own program) through the
real sync pipeline (embedded broker, relay, in-process worker): a linked person's User is made,
patched with what the service may see, deactivated on unlink, made active again on relink (never
a second User), and deleted when the hub account is erased; a service the person never linked
holds nothing about them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from identity.accounts import erase, link_lifecycle
from identity.accounts.store import find_by_sub
from identity.appkeys import DB
from identity.db.models import Link, Service, utcnow
from tests.support import Hub
from tests.sync.helpers import change, link_directly, settled
from tests.sync.scim_servers import TOKEN, ScimServer, scim_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimServer]:
    yield from scim_server(Path(tmp_path_factory.mktemp("scim")), ("forum", "store"))


async def _scim_id(hub: Hub, client_id: str, sub: str) -> str | None:
    async with hub.app[DB]() as db:
        return await db.scalar(
            select(Link.scim_id).join(Service, Service.id == Link.service_id).where(Service.client_id == client_id, Link.account_id == (await find_by_sub(db, sub)).id)  # type: ignore[union-attr]
        )


async def test_a_person_is_provisioned_through_link_change_unlink_relink_and_erasure(hub: Hub, scim: ScimServer) -> None:
    # Forum may see names and the like (profile), not the email address; Store is never linked.
    forum = await hub.add_service(name="Forum", scim_base_url=f"{scim.base}/forum", scim_token=TOKEN)
    store = await hub.add_service(name="Store", scim_base_url=f"{scim.base}/store", scim_token=TOKEN)
    sub = await hub.add_user(email="ann.scim@example.com", verified=True, given_name="Ann", family_name="Example")

    # Link: the User is made, from what Forum may see.
    await link_directly(hub, [sub], forum.client_id, scope="openid profile")
    await settled(hub, forum.client_id)
    made = await scim.user("forum", sub)
    assert made["userName"] == sub and made["externalId"] == sub and made["active"] is True
    assert made["name"] == {"formatted": "Ann Example", "givenName": "Ann", "familyName": "Example"}
    assert "emails" not in made  # outside Forum's scopes
    assert await _scim_id(hub, forum.client_id, sub) == made["id"]

    # A change Forum may see: patched in place (the same User), empty claims cleared.
    await change(hub, sub, given_name="Anna", family_name=None, locale="fr-FR")
    await settled(hub, forum.client_id)
    patched = await scim.user("forum", sub)
    assert patched["id"] == made["id"] and patched["active"] is True
    assert patched["name"]["givenName"] == "Anna" and "familyName" not in patched["name"] and patched["locale"] == "fr-FR"

    # A change Forum may not see is not sent at all.
    await change(hub, sub, phone_number="+33612345678")
    await settled(hub, forum.client_id)
    assert (await scim.user("forum", sub))["meta"] == patched["meta"]

    # Unlink: deactivated, not removed.
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await link_lifecycle.unlink(db, None, hub.settings.issuer, account, forum.client_id)  # type: ignore[arg-type]
    await settled(hub, forum.client_id)
    unlinked = await scim.user("forum", sub)
    assert unlinked["id"] == made["id"] and unlinked["active"] is False

    # Relink: the same User, active again, with the current profile; still one User.
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        service_id = await db.scalar(select(Service.id).where(Service.client_id == forum.client_id))
        assert account is not None and service_id is not None
        await link_lifecycle.link(db, account_id=account.id, service_id=service_id, scope="openid profile", now=utcnow())
    await settled(hub, forum.client_id)
    [relinked] = await scim.users("forum", sub)
    assert relinked["id"] == made["id"] and relinked["active"] is True and relinked["name"] == patched["name"]

    # Erasure (once unlinked): the User is deleted.
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await link_lifecycle.unlink(db, None, hub.settings.issuer, account, forum.client_id)  # type: ignore[arg-type]
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await erase.erase(db, account, keys=None, issuer=hub.settings.issuer, actor_kind="cli")
    await settled(hub, forum.client_id)
    assert await scim.users("forum", sub) == []

    # Store, never linked, was told nothing about the person at any point.
    await settled(hub, store.client_id)
    assert await scim.users("store", sub) == []
