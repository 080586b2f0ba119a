"""The console's service pages over HTTP: admins see every service, its settings and the age of its
secrets; a service owner sees only the services an admin named for them, people there only by
``sub``, and another service's pages answer exactly as a service that does not exist; agents and
supervisors get no service or admin page, service owners and admins no people search; every look
and every action is in the audit trail."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import (
    Account,
    DeadLetter,
    Delivery,
    Link,
    Notice,
    Resync,
    Service,
    utcnow,
)
from tests.cli import onesignin
from tests.identity.test_operator_cli import cli_env
from tests.support import Hub
from tests.support_console.console import Console, audit_records, console_for


@dataclass
class Seeded:
    store: str
    forum: str
    ann: str
    bob: str
    letter: int


async def _seed(hub: Hub) -> Seeded:
    """Store (delivered to Ann, a dead delivery for Bob) and Forum (its own delivery to Bob)."""
    store = await hub.add_service(name="Store", webhook_url="https://store.example/hook")
    forum = await hub.add_service(name="Forum", webhook_url="https://forum.example/hook")
    ann = await hub.add_user(email="ann@example.com", verified=True)
    bob = await hub.add_user(email="bob@example.com", verified=True, given_name="Bob", family_name="Secretname")
    now = utcnow()
    async with hub.app[DB].begin() as db:
        ids = {a.sub: a.id for a in (await db.scalars(select(Account))).all()}
        services = {s.client_id: s.id for s in (await db.scalars(select(Service))).all()}
        s, f = services[store.client_id], services[forum.client_id]
        for service_id in (s, f):
            for sub in (ann, bob):
                db.add(Link(account_id=ids[sub], service_id=service_id, scope="openid profile email"))
        db.add(Delivery(service_id=s, account_id=ids[ann], channel="webhook", wanted_version=1, delivered_version=1, origin="person",
                        attempts=0, next_attempt_at=now, delivered_at=now, last_status=204, last_delay_ms=87))
        dead = Delivery(service_id=s, account_id=ids[bob], channel="webhook", wanted_version=1, delivered_version=0, origin="person",
                        state="dead", attempts=9, next_attempt_at=now, last_error="HTTP 500", last_status=500, last_delay_ms=259200000)
        db.add(dead)
        db.add(Delivery(service_id=f, account_id=ids[bob], channel="webhook", wanted_version=1, delivered_version=1, origin="person",
                        attempts=0, next_attempt_at=now, delivered_at=now, last_status=200, last_delay_ms=40))
        db.add(Notice(service_id=f, account_id=ids[bob], channel="webhook", event_type="link.revoked", message_id="forum-notice-1",
                      key=bob, body="{}", state="dead", attempts=9, last_error="HTTP 503"))
        await db.flush()
        letter = DeadLetter(delivery_id=dead.id, service_id=s, account_id=ids[bob], channel="webhook", version=1, attempts=9,
                            last_error="HTTP 500", failing_since=now - dt.timedelta(days=3))
        db.add(letter)
        await db.flush()
        letter_id = letter.id
    return Seeded(store.client_id, forum.client_id, ann, bob, letter_id)


async def _owner_of(hub: Hub, admin: Console, client_id: str, email: str = "owner@example.com") -> Console:
    """A service owner, named for ``client_id`` by the admin on the staff page."""
    owner = await console_for(hub, "service_owner", email)
    page = await admin.get("/support/admin/staff")
    saved = await admin.submit(page, f"/support/admin/staff/{owner.sub}/services", client_id=client_id)
    assert saved.status_code == 200 and client_id in saved.text
    return owner


async def test_a_service_owner_sees_their_service_and_nothing_of_another(hub: Hub) -> None:
    seeded = await _seed(hub)
    admin = await console_for(hub, "admin")
    owner = await _owner_of(hub, admin, seeded.store)
    try:
        listing = await owner.get("/support/services")
        page = await owner.get(f"/support/services/{seeded.store}")
        other = await owner.get(f"/support/services/{seeded.forum}")
        missing = await owner.get("/support/services/no-such-service")
        other_day = await owner.get(f"/support/services/{seeded.forum}", window="day")
        redeliver_other = await owner.http.post(f"/support/services/{seeded.forum}/redeliver", data={"csrf_token": _csrf(page.text)})
        resync_other = await owner.http.post(f"/support/services/{seeded.forum}/resync", data={"csrf_token": _csrf(page.text)})
        # Forum's dead notice, by its id, through the owner's own service: not theirs, so nothing.
        forum_notice = await _notice_id(hub)
        sideways = await owner.submit(page, f"/support/services/{seeded.store}/redeliver", kind="notice", id=str(forum_notice))
        person = await owner.get(f"/support/people/{seeded.bob}")
        search = await owner.get("/support/", q="bob@")
        audit = await owner.get("/support/audit")
        staff = await owner.get("/support/admin/staff")
    finally:
        await owner.aclose()
        await admin.aclose()
    assert listing.status_code == 200 and "Store" in listing.text and "Forum" not in listing.text
    assert seeded.forum not in listing.text
    assert page.status_code == 200
    # People only by sub: the delivery table names Ann and Bob by sub, never by address or name.
    assert seeded.ann in page.text and seeded.bob in page.text
    for private in ("ann@example.com", "bob@example.com", "Secretname"):
        assert private not in page.text and private not in listing.text
    assert ">204<" in page.text and "87 ms" in page.text  # the answer code and the delay
    # No settings or secret ages for an owner.
    assert "Client secret age" not in page.text and "Client secret age" not in listing.text
    # Another service answers as one that does not exist, on every URL.
    assert other.status_code == missing.status_code == other_day.status_code == 404
    assert other.text == missing.text
    assert redeliver_other.status_code == resync_other.status_code == 404
    assert "Queued again: 0 dead letters." in sideways.text
    async with hub.app[DB]() as db:
        assert await db.scalar(select(Notice.state).where(Notice.id == forum_notice)) == "dead"
        assert await db.scalar(select(Resync.id)) is None
    # No people, no audit trail, no admin pages; the console's home sends them to their services.
    assert person.status_code == audit.status_code == staff.status_code == 403
    assert search.status_code == 303 and search.headers["location"] == "/support/services"
    assert "bob@example.com" not in person.text + search.text
    views = await audit_records(hub, action="support.service_view")
    # Their two looks (the page, and again after the redelivery): none at Forum.
    assert [(r.actor, r.detail["client_id"]) for r in views] == [(owner.sub, seeded.store)] * 2
    # Every refusal is recorded, as an access control failure: Forum's pages (as the missing
    # service's, which cannot be told apart from outside) and the people's side.
    refused = await audit_records(hub, action="support.refused")
    assert [(r.actor, r.detail["method"], r.detail["path"], r.detail["status"], r.detail["role"]) for r in refused] == [
        (owner.sub, "GET", f"/services/{seeded.forum}", 404, "service_owner"),
        (owner.sub, "GET", "/services/no-such-service", 404, "service_owner"),
        (owner.sub, "GET", f"/services/{seeded.forum}", 404, "service_owner"),
        (owner.sub, "POST", f"/services/{seeded.forum}/redeliver", 404, "service_owner"),
        (owner.sub, "POST", f"/services/{seeded.forum}/resync", 404, "service_owner"),
        (owner.sub, "GET", f"/people/{seeded.bob}", 403, "service_owner"),
        (owner.sub, "GET", "/audit", 403, "service_owner"),
        (owner.sub, "GET", "/admin/staff", 403, "service_owner"),
    ]


def _csrf(page: str) -> str:
    from tests.support import form

    return form(page, "/support/logout").fields["csrf_token"]


async def _notice_id(hub: Hub) -> int:
    async with hub.app[DB]() as db:
        found = await db.scalar(select(Notice.id))
    assert found is not None
    return found


async def test_agents_and_supervisors_get_no_service_or_admin_page(hub: Hub) -> None:
    seeded = await _seed(hub)
    agent = await console_for(hub, "agent")
    supervisor = await console_for(hub, "supervisor")
    admin = await console_for(hub, "admin")
    try:
        for staff in (agent, supervisor):
            for path in ("/support/services", f"/support/services/{seeded.store}", "/support/admin/staff"):
                answer = await staff.get(path)
                assert answer.status_code == 403, (staff.sub, path)
                assert "Store" not in answer.text
        # A supervisor manages agents and supervisors only: no admin made, no admin disabled.
        page = await supervisor.get("/support/agents")
        assert admin.sub not in page.text
        made = await supervisor.submit(page, "/support/agents", email="ann@example.com", role="admin")
        disabled = await supervisor.http.post(f"/support/agents/{admin.sub}/disable", data={"csrf_token": _csrf(page.text)})
        # Admins get no people search or profiles either.
        search = await admin.get("/support/", q="ann@")
        person = await admin.get(f"/support/people/{seeded.ann}")
    finally:
        for c in (agent, supervisor, admin):
            await c.aclose()
    assert made.status_code == 400 and "role must be one of: agent, supervisor" in made.text
    assert disabled.status_code == 400 and "an admin changes them" in disabled.text
    assert search.status_code == 303 and search.headers["location"] == "/support/services"
    assert person.status_code == 403 and "ann@example.com" not in person.text
    assert await audit_records(hub, action="staff.added") == []
    assert await audit_records(hub, action="staff.disabled") == []


async def test_every_admin_look_and_action_is_audited(hub: Hub) -> None:
    seeded = await _seed(hub)
    await hub.add_user(email="new@example.com", verified=True)
    admin = await console_for(hub, "admin")
    try:
        listing = await admin.get("/support/services")
        day = await admin.get(f"/support/services/{seeded.store}", window="day")
        page = await admin.get(f"/support/services/{seeded.store}")
        one = await admin.submit(page, f"/support/services/{seeded.store}/redeliver", kind="delivery", id=str(seeded.letter))
        resynced = await admin.submit(one, f"/support/services/{seeded.store}/resync")
        staff = await admin.get("/support/admin/staff")
        added = await admin.submit(staff, "/support/admin/staff", email="new@example.com", role="service_owner")
        new_sub = await _sub_of(hub, "new@example.com")
        owned = await admin.submit(added, f"/support/admin/staff/{new_sub}/services", client_id=seeded.forum)
        role = await admin.submit(owned, f"/support/admin/staff/{new_sub}/role", role="supervisor")
        gone = await admin.submit(role, f"/support/admin/staff/{new_sub}/disable")
        self_disable = await admin.http.post(f"/support/admin/staff/{admin.sub}/disable", data={"csrf_token": _csrf(gone.text)})
    finally:
        await admin.aclose()
    # An admin sees every service, with its secrets' ages and settings.
    assert "Store" in listing.text and "Forum" in listing.text and "Client secret age" in listing.text
    assert "under a minute" in listing.text
    assert day.status_code == 200 and "<strong>Last day</strong>" in day.text and day.text.count("<svg") == 5
    assert "Settings" in page.text and "https://store.example/hook" in page.text
    assert "HTTP 500" in page.text and f"Redeliver delivery {seeded.letter}" in page.text
    assert "Queued again: 1 dead letter." in one.text
    assert "Resync started: 2 people queued." in resynced.text and "0 of 2" in resynced.text
    assert gone.status_code == 200 and self_disable.status_code == 403
    records = [r for r in await audit_records(hub) if r.actor == admin.sub]
    steps = [(r.action, r.account_sub, (r.detail or {}).get("client_id")) for r in records]
    assert steps == [
        ("support.services_view", None, None),
        ("support.service_view", None, seeded.store),
        ("support.service_view", None, seeded.store),
        ("service.redelivered", None, seeded.store),
        ("support.service_view", None, seeded.store),
        ("service.resynced", None, seeded.store),
        ("support.service_view", None, seeded.store),
        ("support.staff_view", None, None),
        ("staff.added", new_sub, None),
        ("support.staff_view", None, None),
        ("staff.services_set", new_sub, None),
        ("support.staff_view", None, None),
        ("staff.role_changed", new_sub, None),
        ("support.staff_view", None, None),
        ("staff.disabled", new_sub, None),
        ("support.staff_view", None, None),
    ], steps
    redelivered = next(r for r in records if r.action == "service.redelivered")
    assert redelivered.detail == {"client_id": seeded.store, "kind": "delivery", "id": seeded.letter, "count": 1}
    assert next(r for r in records if r.action == "staff.services_set").detail == {"services": [seeded.forum]}


async def _sub_of(hub: Hub, email: str) -> str:
    async with hub.app[DB]() as db:
        found = await db.scalar(select(Account.sub).where(Account.email == email))
    assert found is not None
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_onesignin_agents_services_names_a_service_owners_services(hub: Hub) -> None:
    seeded = await _seed(hub)
    owner = await console_for(hub, "service_owner")
    try:
        refused = await asyncio.to_thread(onesignin, cli_env(hub), "agents", "services", "--email", "service_owner@example.com", "--client-id", "nope")
        done = await asyncio.to_thread(
            onesignin, cli_env(hub), "agents", "services", "--email", "service_owner@example.com", "--client-id", seeded.forum
        )
        listing = await owner.get("/support/services")
    finally:
        await owner.aclose()
    assert refused.returncode == 2 and "no such service: nope" in refused.stderr
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"email": "service_owner@example.com", "services": [seeded.forum]}
    assert "Forum" in listing.text and "Store" not in listing.text
    [record] = await audit_records(hub, action="staff.services_set")
    assert (record.actor_kind, record.account_sub, record.detail) == ("cli", owner.sub, {"services": [seeded.forum]})
