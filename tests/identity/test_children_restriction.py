"""A rectified date of birth through any channel restricts a child's account without a
guardian's consent, in the same transaction as the change: pending deliveries are dropped,
each linked service gets an ``account.restricted`` notice, the person's page explains what to do;
a corrected date that is an adult's lifts it, and a guardian's earlier consent prevents it."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import httpx2
import pytest
from babel.dates import format_date
from sqlalchemy import select, update

from identity.accounts.children import ChildPolicy, OnlyThePerson
from identity.accounts.store import update_details
from identity.appkeys import DB
from identity.db.models import (
    Account,
    AuditRecord,
    Delivery,
    Notice,
    OutboxEvent,
    utcnow,
)
from identity.mail import read_outbox
from schemas.events import LinkCreated, service_event
from sync import fanout
from tests.support import (
    Browser,
    Hub,
    RelyingParty,
    confirm_mailed_link,
    form,
    sign_in_through,
)

TWELVE = (dt.date.today() - dt.timedelta(days=12 * 366)).isoformat()
ADULT = "1990-05-01"


async def _account(hub: Hub) -> Account:
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.email == "ann@example.com"))
        assert account is not None
        return account


async def _linked(hub: Hub, browser: Browser) -> tuple[RelyingParty, dict[str, Any]]:
    service = await hub.add_service(webhook_url="https://store.example/hooks", kafka_topic=True)
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    await browser.sign_in()
    token, _ = await sign_in_through(rp, browser)
    return rp, token


async def _set_birthdate(browser: Browser, value: str) -> None:
    page = await browser.go("/account")
    f = form(page.text, "/account/details")
    done = await browser.http.post(f.action, data=f.fields | {"birthdate": value})
    assert done.status_code == 303, done.text


async def test_a_rectified_birthdate_on_the_page_restricts_at_once(hub: Hub, browser: Browser) -> None:
    rp, token = await _linked(hub, browser)
    account = await _account(hub)
    assert (await rp.post("/introspect", {"token": token["access_token"]})).json()["active"] is True
    async with hub.app[DB].begin() as db:
        # A snapshot waiting for the service when the truth comes out.
        event = LinkCreated(id=str(uuid.uuid4()), sub=account.sub, client_id=rp.client_id, version=account.version, occurred_at=utcnow())
        assert await fanout.record(db, [event], echo_suppression=True) == 2
    await _set_birthdate(browser, TWELVE)

    account = await _account(hub)
    assert account.status == "pending_guardian" and account.restricted_at is not None
    assert account.delete_after == account.restricted_at + dt.timedelta(days=30)
    async with hub.app[DB]() as db:
        pending = (await db.scalars(select(Delivery).where(Delivery.wanted_version > Delivery.delivered_version))).all()
        assert pending == []
        sent = (await db.scalars(select(Notice).order_by(Notice.channel))).all()
        assert [(n.channel, n.event_type, n.key) for n in sent] == [
            ("topic", "account.restricted", account.sub),
            ("webhook", "account.restricted", account.sub),
        ]
        body = service_event.validate_python(json.loads(sent[0].body))
        assert body.data.sub == account.sub  # type: ignore[union-attr]
        [audit] = (await db.scalars(select(AuditRecord))).all()
        assert (audit.action, audit.account_sub) == ("account.restricted", account.sub)
        # The change itself is recorded and its event queued, in the same transaction.
        assert any("birthdate" in e.payload.get("changed", []) for e in (await db.scalars(select(OutboxEvent))).all())
        # Whatever the fan-out reads now, it records nothing for a restricted account.
        again = LinkCreated(id=str(uuid.uuid4()), sub=account.sub, client_id=rp.client_id, version=account.version, occurred_at=utcnow())
        assert await fanout.record(db, [again], echo_suppression=True) == 0

    # The service's tokens for her open nothing, and introspection says so.
    assert (await hub.userinfo(token["access_token"])).status_code == 401
    introspected = await rp.post("/introspect", {"token": token["access_token"]})
    assert introspected.json() == {"active": False}

    page = await browser.go("/account")
    assert "Tell us your parent's or guardian's email address" in page.text
    assert format_date(account.delete_after, "medium", locale="en_GB") in page.text


async def test_an_adult_birthdate_lifts_it_and_a_guardians_consent_prevents_it(hub: Hub, browser: Browser) -> None:
    await _linked(hub, browser)
    await _set_birthdate(browser, TWELVE)
    await _set_birthdate(browser, ADULT)
    account = await _account(hub)
    assert account.status == "active" and account.restricted_at is None and account.delete_after is None
    async with hub.app[DB]() as db:
        types = [n.event_type for n in (await db.scalars(select(Notice).where(Notice.channel == "webhook").order_by(Notice.id))).all()]
        assert types == ["account.restricted", "account.restriction_lifted"]
        # A fresh snapshot for the service that heard of the restriction.
        assert [e.event_type for e in (await db.scalars(select(OutboxEvent).order_by(OutboxEvent.id))).all()][-1] == "link.created"

    # A child whose guardian consented stays shared whatever the date says.
    async with hub.app[DB].begin() as db:
        await db.execute(update(Account).values(guardian_consent_at=utcnow()))
        current = await db.scalar(select(Account))
        assert current is not None
        await update_details(db, current, {"birthdate": dt.date.fromisoformat(TWELVE)}, channel="support", children=ChildPolicy(16, 30))
    assert (await _account(hub)).status == "active"


async def test_the_configured_age_applies(hub: Hub) -> None:
    await hub.add_user(verified=True)
    fourteen = dt.date.today() - dt.timedelta(days=14 * 366)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account))
        assert account is not None
        await update_details(db, account, {"birthdate": fourteen}, channel="cli", children=ChildPolicy(age_of_consent=13, grace_days=7))
        assert account.status == "active"
        await update_details(db, account, {"birthdate": fourteen - dt.timedelta(days=1)}, channel="cli", children=ChildPolicy(age_of_consent=16, grace_days=7))
        assert account.status == "pending_guardian"
        assert account.delete_after is not None and account.restricted_at is not None
        assert account.delete_after - account.restricted_at == dt.timedelta(days=7)


async def test_a_child_registered_without_consent_has_a_deletion_date_until_a_guardian_confirms(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True, birthdate=TWELVE, guardian_email="parent@example.com")
    account = await _account(hub)
    assert account.status == "pending_guardian"
    assert account.delete_after == account.created_at + dt.timedelta(days=hub.settings.child_grace_days)
    await browser.sign_in()
    page = await browser.go("/account")
    assert format_date(account.delete_after, "medium", locale="en_GB") in page.text
    guardian = Browser(hub)
    try:
        await confirm_mailed_link(hub, guardian, "parent@example.com", "/guardian/confirm")
    finally:
        await guardian.aclose()
    account = await _account(hub)
    assert account.status == "active" and account.delete_after is None and account.guardian_consent_at is not None


async def test_a_service_cannot_make_an_adult_a_child(hub: Hub, browser: Browser) -> None:
    """Restricting someone everywhere is the person's own to set off: a member service's
    PATCH that would make them a child is refused (422) and changes nothing."""
    rp, token = await _linked(hub, browser)
    await _set_birthdate(browser, ADULT)
    before = await _account(hub)
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        answer = await http.patch(
            "/api/v1/me", json={"birthdate": TWELVE, "given_name": "Anna"}, headers={"Authorization": f"Bearer {token['access_token']}"}
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["problems"] == [{"field": "birthdate", "message": OnlyThePerson.public}]
    after = await _account(hub)
    assert (after.status, after.birthdate, after.given_name, after.version) == ("active", before.birthdate, "Ann", before.version)
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(Notice))).all() == []
    # An adult's date from the service is fine; so is the person's own child's date.
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        fine = await http.patch("/api/v1/me", json={"birthdate": "1991-01-01"}, headers={"Authorization": f"Bearer {token['access_token']}"})
    assert fine.status_code == 200
    await _set_birthdate(browser, TWELVE)
    assert (await _account(hub)).status == "pending_guardian"


async def test_only_the_person_or_an_operator_may_set_a_childs_date(hub: Hub) -> None:
    await hub.add_user(verified=True)
    twelve = dt.date.fromisoformat(TWELVE)
    for channel in ("service", "support"):
        async with hub.app[DB].begin() as db:
            account = await db.scalar(select(Account))
            assert account is not None
            with pytest.raises(OnlyThePerson):
                await update_details(db, account, {"birthdate": twelve}, channel=channel, children=ChildPolicy(16, 30))  # type: ignore[arg-type]
    assert (await _account(hub)).birthdate is None
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account))
        assert account is not None
        await update_details(db, account, {"birthdate": twelve}, channel="cli", children=ChildPolicy(16, 30))
    assert (await _account(hub)).status == "pending_guardian"


async def test_the_guardian_named_later_is_mailed_nothing_the_child_typed(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True, given_name="Cheap pills at", family_name="pills.example")
    await browser.sign_in()
    await _set_birthdate(browser, TWELVE)
    page = await browser.go("/account/guardian")
    asked = await browser.submit(page, "/account/guardian", guardian_email="parent@example.com")
    assert "We asked your parent or guardian" in asked.text
    (mail,) = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "parent@example.com"]
    content = mail.get_content()
    assert "pills" not in content and "ann@example.com" not in content
    born = dt.date.fromisoformat(TWELVE)
    assert f"gave their date of birth as {born.day} {born:%B %Y}" in content
    account = await _account(hub)
    assert account.delete_after is not None and f"deleted on {account.delete_after.day} {account.delete_after:%B %Y}" in content
