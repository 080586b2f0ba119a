"""What an agent does for a person from the profile: edit basic details (with a reason, saved with
the agent as origin and queued for sync), resend the address confirmation, open a rights request,
resync one service. Each action and its audit record commit together or not at all."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import (
    Account,
    AccountChange,
    Delivery,
    EmailToken,
    OutboxEvent,
    RightsRequest,
    Service,
)
from identity.mail import read_outbox
from tests.support import Hub
from tests.support_console.console import audit_records, console_for, linked_person


async def _account(hub: Hub, sub: str) -> Account:
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
    assert account is not None
    return account


async def _support_events(hub: Hub, sub: str) -> list[OutboxEvent]:
    async with hub.app[DB].begin() as db:
        events = (await db.scalars(select(OutboxEvent).where(OutboxEvent.key == sub).order_by(OutboxEvent.id))).all()
    return [e for e in events if e.payload.get("channel") == "support"]


async def test_an_edit_is_saved_with_the_agent_as_origin_queued_for_sync_and_audited_by_claim_name(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        before = await _account(hub, person.sub)
        done = await console.submit(
            page, f"{path}/edit", family_name="Exemplar", phone_number="+33 6 12 34 56 78", reason="Caller corrected the spelling"
        )
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert done.status_code == 200 and "The details are saved" in done.text
    after = await _account(hub, person.sub)
    assert (after.family_name, after.name, after.phone_number) == ("Exemplar", "Ann Exemplar", "+33612345678")
    assert after.birthdate == dt.date(1980, 4, 12) and after.address == before.address  # left empty: kept
    assert after.version == before.version + 1
    async with hub.app[DB].begin() as db:
        change = await db.scalar(select(AccountChange).where(AccountChange.account_id == after.id, AccountChange.version == after.version))
    assert change is not None and (change.channel, change.actor) == ("support", console.sub)
    assert sorted(change.fields) == ["family_name", "name", "phone_number"]
    (event,) = await _support_events(hub, person.sub)
    assert event.event_type == "profile.changed" and event.payload["version"] == after.version
    (record,) = await audit_records(hub, account_sub=person.sub, action="support.edit")
    assert record.actor == console.sub and record.reason == "Caller corrected the spelling"
    assert sorted(record.detail["fields"]) == ["family_name", "name", "phone_number"]  # type: ignore[index]
    assert "Exemplar" not in str(record.detail) and "3361" not in str(record.detail)


async def test_a_failed_edit_changes_nothing_and_leaves_no_record(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        before = await _account(hub, person.sub)
        no_reason = await console.submit(page, f"{path}/edit", family_name="Exemplar", reason=" ")
        bad = await console.submit(page, f"{path}/edit", family_name="Exemplar", phone_number="07700 900", reason="Caller asked")
        same = await console.submit(page, f"{path}/edit", reason="Caller asked")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert no_reason.status_code == 400 and "Give a reason" in no_reason.text
    assert bad.status_code == 400 and "international format" in bad.text
    assert 'value="Exemplar"' in bad.text and 'value="07700 900"' in bad.text  # what was typed comes back
    assert "1980-04-12" not in bad.text and "+447700900456" not in bad.text  # and nothing stored
    assert same.status_code == 200 and "Nothing was changed" in same.text
    after = await _account(hub, person.sub)
    assert (after.version, after.family_name) == (before.version, "Example")
    assert await _support_events(hub, person.sub) == []
    assert await audit_records(hub, account_sub=person.sub, action="support.edit") == []


async def test_a_correction_with_control_or_invisible_characters_is_refused_by_field(hub: Hub) -> None:
    """What a caller dictates cannot smuggle bidi overrides, zero-width characters or controls
    into the profile every service and agent then sees; each field says which character."""
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        before = await _account(hub, person.sub)
        bad = await console.submit(
            page, f"{path}/edit", given_name="Ann\u202enimda", locality="Ox\u200bford", region="Oxon\x1b[2J", reason="Caller asked"
        )
        rights = await console.submit(page, f"{path}/rights-requests", type="erasure", target="hub", details="Delete \u2066it all\u2069")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert bad.status_code == 400
    assert "Remove the invisible character U+202E (RIGHT-TO-LEFT OVERRIDE) at character 4" in bad.text
    assert "U+200B (ZERO WIDTH SPACE)" in bad.text
    assert "U+001B" in bad.text
    after = await _account(hub, person.sub)
    assert (after.version, after.given_name, after.address) == (before.version, before.given_name, before.address)
    assert await audit_records(hub, account_sub=person.sub, action="support.edit") == []
    assert "Remove the control or invisible formatting characters from the details" in rights.text
    async with hub.app[DB].begin() as db:
        assert (await db.scalars(select(RightsRequest))).all() == []
    assert await audit_records(hub, account_sub=person.sub, action="support.rights_request") == []


async def test_an_agent_cannot_change_the_sign_in_address(hub: Hub) -> None:
    """The sign-in address is the person's own to change (with their password, confirmed by a
    link to the new address): an address posted with an edit is ignored, and no link is mailed."""
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        done = await console.submit(page, f"{path}/edit", email="agent.choice@example.com", family_name="Exemplar", reason="Caller asked for it")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert done.status_code == 200 and "The details are saved" in done.text
    after = await _account(hub, person.sub)
    assert (after.email, after.email_verified, after.family_name) == ("ann@example.com", True, "Exemplar")
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(EmailToken).where(EmailToken.account_id == after.id))).all() == []
    assert [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "agent.choice@example.com"] == []


async def test_a_date_of_birth_making_the_person_a_child_is_the_persons_own_to_set(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    child = (dt.date.today() - dt.timedelta(days=365 * 10)).isoformat()
    before = await _account(hub, person.sub)
    try:
        page = await console.get(path)
        refused = await console.submit(page, f"{path}/edit", birthdate=child, family_name="Other", reason="Guardian called: wrong date")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert refused.status_code == 400 and "Only the person" in refused.text
    after = await _account(hub, person.sub)
    assert after.restricted_at is None and after.status == "active"
    assert (after.version, after.birthdate, after.family_name) == (before.version, before.birthdate, before.family_name)
    assert await _support_events(hub, person.sub) == []
    assert await audit_records(hub, account_sub=person.sub, action="support.edit") == []


async def test_resend_verification_mails_a_new_link_and_is_audited(hub: Hub) -> None:
    sub = await hub.add_user(email="new@example.com")
    console = await console_for(hub)
    path = f"/support/people/{sub}"
    try:
        page = await console.get(path)
        assert "not confirmed" in page.text
        done = await console.submit(page, f"{path}/resend-verification", reason="Lost the first mail")
    finally:
        await console.aclose()
    assert "A new confirmation link was sent" in done.text
    mails = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "new@example.com"]
    assert len(mails) == 1 and "/verify-email?token=" in mails[0].get_content()
    (record,) = await audit_records(hub, account_sub=sub, action="support.resend_verification")
    assert record.actor == console.sub and record.reason == "Lost the first mail"


async def test_resend_verification_to_a_confirmed_address_is_refused(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        assert f"{path}/resend-verification" not in page.text
        refused = await console.http.post(f"{path}/resend-verification", data={"csrf_token": _csrf(page.text)})
        refused = await console.get(refused.headers["location"])
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert "already confirmed" in refused.text
    assert not [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "ann@example.com"]
    assert await audit_records(hub, action="support.resend_verification") == []


def _csrf(page: str) -> str:
    return page.split('name="csrf_token" value="')[1].split('"')[0]


async def test_a_rights_request_is_opened_for_the_person_by_the_agent(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        done = await console.submit(page, f"{path}/rights-requests", type="erasure", target=person.client_id, details="Delete my orders")
        stranger = await console.submit(page, f"{path}/rights-requests", type="access", target="not-a-linked-service")
        bad_type = await console.submit(page, f"{path}/rights-requests", type="everything", target="hub")
        to_hub = await console.submit(page, f"{path}/rights-requests", type="access", target="hub", reason="Phoned in")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert "The rights request is open" in done.text and "The rights request is open" in to_hub.text
    assert "never linked that service" in stranger.text and "Choose which right" in bad_type.text
    async with hub.app[DB].begin() as db:
        rows = (await db.execute(select(RightsRequest, Service.client_id).outerjoin(Service, Service.id == RightsRequest.service_id).order_by(RightsRequest.id))).all()
    assert [(r.type, cid, r.opened_by, r.opened_by_actor, r.details) for r, cid in rows] == [
        ("erasure", person.client_id, "support", console.sub, "Delete my orders"),
        ("access", None, "support", console.sub, None),
    ]
    records = await audit_records(hub, account_sub=person.sub, action="support.rights_request")
    assert [(r.detail or {}).get("target") for r in records] == [person.client_id, "hub"]
    assert [(r.detail or {}).get("request") for r in records] == [r.public_id for r, _ in rows]
    assert records[1].reason == "Phoned in"


async def test_a_resync_queues_a_snapshot_for_that_service_only(hub: Hub) -> None:
    person = await linked_person(hub, webhook_url="https://store.example/hooks", kafka_topic=True)
    other = await hub.add_service(name="Forum", webhook_url="https://forum.example/hooks")
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        done = await console.submit(page, f"{path}/resync")
        elsewhere = await console.submit(page, f"{path}/resync", client_id=other.client_id)
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert "A fresh copy of the profile is queued" in done.text
    assert "no active link to that service" in elsewhere.text
    account = await _account(hub, person.sub)
    async with hub.app[DB].begin() as db:
        rows = (await db.execute(select(Delivery, Service.client_id).join(Service))).all()
    assert sorted((cid, d.channel, d.snapshot, d.wanted_version, d.delivered_version, d.origin) for d, cid in rows) == [
        (person.client_id, "topic", True, account.version, 0, "support"),
        (person.client_id, "webhook", True, account.version, 0, "support"),
    ]
    (record,) = await audit_records(hub, account_sub=person.sub, action="support.resync")
    assert record.detail == {"client_id": person.client_id}


async def test_a_service_without_webhook_or_topic_offers_no_resync(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        assert f"{path}/resync" not in page.text
        refused = await console.http.post(f"{path}/resync", data={"csrf_token": _csrf(page.text), "client_id": person.client_id})
        refused = await console.get(refused.headers["location"])
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert "no webhook, topic or SCIM server" in refused.text
    assert await audit_records(hub, action="support.resync") == []
