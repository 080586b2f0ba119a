"""A person's linked profile in the console: what it shows, what stays masked until revealed with
a reason, and the audit record of every look."""

from __future__ import annotations

from sqlalchemy import select, update

from identity.appkeys import DB
from identity.db.models import Account, Delivery, Service, StaffMember
from tests.support import Hub
from tests.support_console.console import audit_records, console_for, linked_person

BIRTHDATE, PHONE, STREET = "1980-04-12", "+447700900456", "1 High Street"


async def test_the_profile_shows_linked_services_sync_rights_history_and_sign_ins_with_masks(hub: Hub) -> None:
    person = await linked_person(hub, webhook_url="https://store.example/hooks")
    console = await console_for(hub)
    try:
        page = await console.get(f"/support/people/{person.sub}")
        # Queue a resync (a real delivery row), then let it fail as the worker records it.
        await console.submit(page, f"/support/people/{person.sub}/resync", reason="service asked")
        async with hub.app[DB].begin() as db:
            await db.execute(update(Delivery).values(attempts=3, last_error="HTTP 502 from the webhook", failing_since=Delivery.next_attempt_at))
        page = await console.get(f"/support/people/{person.sub}")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert page.status_code == 200
    text = page.text
    # Basic details, with the date of birth, phone and address masked.
    assert "ann@example.com" in text and "Ann" in text and "Example" in text
    assert BIRTHDATE not in text and PHONE not in text and STREET not in text and "Oxford" not in text
    assert "••••-••-12" in text and "+" + "•" * 10 + "56" in text and "GB" in text
    # The linked service: status, scopes, link date, its own cancellation route, no cancel action.
    assert "Store" in text and person.client_id in text and "active" in text
    assert "openid profile email phone address" in text
    assert 'href="https://store.example/account/close"' in text and "The hub cannot cancel it." in text
    assert "/cancel" not in text.replace("store.example/account/close", "")
    # Sync state: the webhook's delivered version against the account's, and the failure.
    assert "webhook" in text and "HTTP 502 from the webhook" in text and "failing since" in text
    # Change history (created, then the person's phone and address) and the sign-in.
    assert "phone_number, address" in text and "person" in text
    assert "signed in" in text
    # Nothing secret ever reaches the page.
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == person.sub))
        service = await db.scalar(select(Service).where(Service.client_id == person.client_id))
        staff = (await db.scalars(select(StaffMember))).all()
    assert account is not None and service is not None
    for secret in (account.password_hash, service.secret_hash, service.webhook_secret, *(s.totp_secret for s in staff)):
        assert secret and secret not in text
    views = await audit_records(hub, account_sub=person.sub, action="support.view")
    assert len(views) == 3 and {v.actor for v in views} == {console.sub}  # each page: before, after the resync, now


async def test_rights_requests_show_with_due_dates(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    try:
        page = await console.get(f"/support/people/{person.sub}")
        page = await console.submit(page, f"/support/people/{person.sub}/rights-requests", type="access", target=person.client_id)
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert "The rights request is open" in page.text
    assert "Access" in page.text and "Received" in page.text and "support" in page.text
    due = page.text.split("<td>Access</td>")[1]
    assert "Store" in due.split("</tr>")[0]


async def test_an_unknown_person_is_not_found_and_not_recorded(hub: Hub) -> None:
    console = await console_for(hub)
    try:
        page = await console.get("/support/people/0b9a2f7e-0000-4000-8000-000000000000")
        long = await console.get("/support/people/" + "x" * 200)
    finally:
        await console.aclose()
    assert page.status_code == 404 and long.status_code == 404
    assert await audit_records(hub, action="support.view") == []


async def test_reveal_needs_a_reason_and_shows_one_field_on_that_page_only(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        refused = await console.submit(page, f"{path}/reveal", field="birthdate", reason="  ")
        assert "Give a reason" in refused.text and BIRTHDATE not in refused.text
        short = await console.submit(page, f"{path}/reveal", field="birthdate", reason="asked")
        assert "at least 10 characters" in short.text and BIRTHDATE not in short.text
        everything = await console.submit(page, f"{path}/reveal", field="all", reason="identity check on a call")
        assert "Choose which masked field" in everything.text and BIRTHDATE not in everything.text
        assert await audit_records(hub, action="support.reveal") == []

        shown = await console.submit(page, f"{path}/reveal", field="birthdate", reason="identity check on a call")
        assert shown.status_code == 200
        assert BIRTHDATE in shown.text and PHONE not in shown.text and STREET not in shown.text
        again = await console.get(path)
        assert BIRTHDATE not in again.text  # nothing stored: the next page masks it again
    finally:
        await console.aclose()
        await person.browser.aclose()
    reveals = await audit_records(hub, account_sub=person.sub, action="support.reveal")
    assert [(r.actor, r.reason, r.detail) for r in reveals] == [(console.sub, "identity check on a call", {"fields": ["birthdate"]})]


async def test_a_supervisor_reveals_every_masked_field_with_a_short_reason(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub, "supervisor")
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        shown = await console.submit(page, f"{path}/reveal", field="all", reason="audit")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert BIRTHDATE in shown.text and PHONE in shown.text and "1 High Street, Oxford, GB" in shown.text
    (record,) = await audit_records(hub, account_sub=person.sub, action="support.reveal")
    assert record.reason == "audit" and record.detail == {"fields": ["birthdate", "phone_number", "address"]}


async def test_the_console_pages_refuse_a_form_without_its_csrf_token(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    try:
        page = await console.get(f"/support/people/{person.sub}")
        assert page.status_code == 200
        forged = await console.http.post(f"/support/people/{person.sub}/reveal", data={"field": "birthdate", "reason": "identity check on a call"})
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert forged.status_code == 403 and BIRTHDATE not in forged.text
    assert await audit_records(hub, action="support.reveal") == []
