"""Children, against the real sync pipeline: when a date of birth the person rectified shows that
an account is a child's without a guardian's consent (a service or support may not set one), the hub stops sharing it at once, tells every linked
service (``account.restricted``), and asks for a guardian; the guardian's consent lifts it
(``account.restriction_lifted`` and a fresh snapshot)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx2
from sqlalchemy import select

from identity.accounts.store import find_by_email
from identity.appkeys import DB
from identity.db.models import Account, OutboxEvent, utcnow
from tests.support import Browser, Hub, confirm_mailed_link, form
from tests.sync.conftest import add_member, link, patch_me
from tests.sync.helpers import settled
from tests.sync.receivers import Receivers

TWELVE = (dt.date.today() - dt.timedelta(days=12 * 366)).isoformat()


async def _consumed(hub: Hub) -> None:
    """Wait until the worker has recorded what every committed event calls for."""
    for _ in range(400):
        async with hub.app[DB]() as db:
            if not (await db.scalars(select(OutboxEvent.id).where(OutboxEvent.consumed_at.is_(None)))).all():
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the outbox was not consumed")


async def test_a_child_without_consent_stops_being_shared_until_a_guardian_confirms(
    hub: Hub, browser: Browser, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum")
    await hub.add_user(verified=True)
    token = await link(store, browser)
    await link(forum, browser)
    async with hub.app[DB]() as db:
        ann = await find_by_email(db, "ann@example.com")
        assert ann is not None
    sub = ann.sub
    await receivers.wait_for("store", sub, 1)
    await receivers.wait_for("forum", sub, 1)

    # A service may not make her a child: restricting her everywhere is hers alone to set off.
    refused = await patch_me(hub, token["access_token"], {"birthdate": TWELVE})
    assert refused.status_code == 422, refused.text
    assert [p["field"] for p in refused.json()["problems"]] == ["birthdate"]
    async with hub.app[DB]() as db:
        unchanged = await db.scalar(select(Account).where(Account.sub == sub))
        assert unchanged is not None and unchanged.status == "active" and unchanged.birthdate is None
        assert unchanged.version == 1

    # She rectifies her date of birth on her page: she is twelve.
    before = utcnow()
    page = await browser.go("/account")
    details = form(page.text, "/account/details")
    saved = await browser.http.post(details.action, data=details.fields | {"birthdate": TWELVE})
    assert saved.status_code == 303, saved.text[:500]
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
    assert account.status == "pending_guardian"
    assert account.restricted_at is not None and account.restricted_at >= before
    assert account.delete_after == account.restricted_at + dt.timedelta(days=hub.settings.child_grace_days)

    for name in ("store", "forum"):
        event = await receivers.wait_for_event(name, "account.restricted", sub, timeout=15)
        assert event["data"]["reason"] == "child_without_guardian_consent"
        assert event["data"]["delete_after"] is not None
    for member in store, forum:  # what the restriction called for is settled: nothing stray follows
        await settled(hub, member.rp.client_id)
    for name in ("store", "forum"):
        updates = [e for e in receivers[name].received if e["type"].startswith("profile.")]
        assert all(e["data"]["profile"].get("birthdate") != TWELVE for e in updates), name
        assert receivers[name].version(sub) == 1
    # Her tokens no longer open anything.
    assert (await hub.userinfo(token["access_token"])).status_code == 401
    assert (await patch_me(hub, token["access_token"], {"given_name": "Ann"})).status_code == 401

    # Her page tells her how to name a guardian, and accepts one.
    page = await browser.go("/account")
    assert "your account will be deleted" in page.text
    asked = await browser.go("/account/guardian")
    done = await browser.submit(asked, "/account/guardian", guardian_email="parent@example.com")
    assert done.status_code == 200 and "parent@example.com" in done.text

    # The guardian consents: the restriction ends and each service gets a fresh snapshot.
    guardian = Browser(hub)
    try:
        confirmed = await confirm_mailed_link(hub, guardian, "parent@example.com", "/guardian/confirm")
        assert confirmed.status_code == 200 and "Consent recorded" in confirmed.text
    finally:
        await guardian.aclose()
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
    assert account.status == "active" and account.guardian_consent_at is not None
    assert account.restricted_at is None and account.delete_after is None
    for name in ("store", "forum"):
        await receivers.wait_for_event(name, "account.restriction_lifted", sub, timeout=15)
        latest = await receivers.wait_for(name, sub, account.version, timeout=15)
        assert latest["reason"] in ("linked", "resync")
        assert latest["profile"]["birthdate"] == TWELVE


async def test_a_guardian_cannot_be_the_child_and_the_page_is_only_for_children(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    # An adult has no guardian to name.
    response = await browser.http.get("/account/guardian")
    assert response.status_code == 302 and response.headers["location"] == "/account"
    page = await browser.go("/account")
    f = form(page.text, "/account/details")
    await browser.http.post(f.action, data=f.fields | {"birthdate": TWELVE})
    asked = await browser.go("/account/guardian")
    refused = await browser.submit(asked, "/account/guardian", guardian_email="ann@example.com")
    assert refused.status_code == 400
    assert "own email address" in refused.text
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        assert (await http.post("/account/guardian", data={"guardian_email": "p@example.com"})).status_code == 403
