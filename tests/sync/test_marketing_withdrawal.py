"""Withdrawing consent to marketing (news, competitions, offers) takes effect at once, records
when, and reaches every linked service that may see it as a profile change."""

from __future__ import annotations

from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Account, AccountChange, utcnow
from tests.support import Browser, Hub, form
from tests.sync.conftest import add_member, link
from tests.sync.helpers import recorded
from tests.sync.receivers import Receivers

MARKETING = "openid profile email marketing offline_access"


async def _save_marketing(browser: Browser, **ticked: bool) -> None:
    page = await browser.go("/account")
    f = form(page.text, "/account/details")
    fields = {k: v for k, v in f.fields.items() if not k.startswith("marketing_")}
    fields |= {k: "on" for k, on in ticked.items() if on}
    done = await browser.http.post(f.action, data=fields)
    assert done.status_code == 303, done.text


async def _ann(hub: Hub) -> Account:
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.email == "ann@example.com"))
        assert account is not None
        return account


async def test_switching_marketing_off_takes_effect_at_once_and_propagates(hub: Hub, browser: Browser, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store", scope=MARKETING)
    forum = await add_member(hub, receivers, "forum")  # not granted marketing
    await hub.add_user(verified=True)
    token = await link(store, browser)
    await link(forum, browser)
    await _save_marketing(browser, marketing_news=True, marketing_offers=True)
    ann = await _ann(hub)
    opted_in = await receivers.wait_for("store", ann.sub, ann.version)
    assert opted_in["profile"]["marketing_news"] is True
    # Recorded too: a change made while the opt-in is in flight is coalesced with it.
    await recorded(hub, store.rp.client_id, ann.sub, ann.version)
    offers_at = ann.marketing_offers_at

    before = utcnow()
    await _save_marketing(browser, marketing_offers=True)  # news switched off
    after = utcnow()
    ann = await _ann(hub)
    assert ann.marketing_news is False and ann.marketing_offers is True
    assert ann.marketing_news_at is not None and before <= ann.marketing_news_at <= after
    assert ann.marketing_offers_at == offers_at  # untouched choices keep their time
    async with hub.app[DB]() as db:
        last = await db.scalar(select(AccountChange).where(AccountChange.account_id == ann.id).order_by(AccountChange.version.desc()).limit(1))
    assert last is not None and last.fields == ["marketing_news"] and last.channel == "person" and last.version == ann.version
    assert before <= last.at <= after

    # At once: what the service reads now already says no.
    claims = (await hub.userinfo(token["access_token"])).json()
    assert claims["marketing_news"] is False
    # And sync tells it, as a profile change.
    withdrawn = await receivers.wait_for("store", ann.sub, ann.version)
    event = next(e for e in receivers["store"].received if e["data"].get("version") == ann.version)
    assert event["type"] == "profile.updated" and withdrawn["changed"] == ["marketing_news"]
    assert withdrawn["profile"]["marketing_news"] is False and withdrawn["profile"]["marketing_offers"] is True
    assert withdrawn["origin"] == {"channel": "person", "this_service": False}
    # A service not granted the marketing scope hears nothing of it.
    assert all("marketing_news" not in e["data"].get("profile", {}) for e in receivers["forum"].received)
