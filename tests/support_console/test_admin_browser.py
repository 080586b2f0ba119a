"""The admin pages and a service owner's view in a real headless Chromium, against the hub on real
HTTP with the real sync pipeline (embedded broker, relay, worker) and two member services'
webhooks, one of them failing: an admin signs in with password and TOTP, starts a resync of both
services (a burst of deliveries), sees the failing one's sync health at a glance (charts from the
rollups the delivery engine wrote, its dead letters), redelivers a dead letter and names a service
owner's service; the owner, signed in the same way, sees their service's deliveries by ``sub``
only and nothing of the other service or of anyone's profile. Every admin look and action is in
the audit trail.

Set ``ONESIGNIN_TEST_SHOTS`` to a directory to keep the screenshots of the sync-health pages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import Page, expect
from sqlalchemy import func, select

from identity.appkeys import DB
from identity.db.models import Account, AuditRecord, DeadLetter, Delivery, Link, Service
from tests.conftest import CHROMIUM
from tests.support import PASSWORD, Hub, eventually
from tests.support_console.signing_in import add_staff
from tests.sync.conftest import (  # noqa: F401
    FAST_SYNC,
    add_member,
    broker,
    kafka_settings,
    receivers,
)
from tests.sync.receivers import Receivers

PEOPLE = 40

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
    ),
]


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    # A failing delivery gives up after 2 s (three fast retries), and is paced at 100 people a second.
    # Store's receiver answers 500 at once; on a loaded machine that answer may still take longer
    # than FAST_SYNC's 2 s timeout, and a row whose last attempt timed out records no status: the
    # timeout (and the lease that must outlast it) leave room for the answer the test reads.
    return FAST_SYNC | kafka_settings | {"sync_give_up_after": 2.0, "sync_resync_rate": 100.0, "webhook_timeout": 10.0, "sync_lease": 15.0}



async def _sign_in(page: Page, hub: Hub, email: str, code: str) -> None:
    """Password at the hub's own sign-in page, then the TOTP code."""
    await page.goto(hub.url + "/support/login")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(hub.url + "/support/totp")
    await page.get_by_label("Code").fill(code)
    await page.get_by_role("button", name="Continue").click()


async def _people(hub: Hub, *client_ids: str) -> list[str]:
    """PEOPLE people, each linked to every service named."""
    subs = [await hub.add_user(email=f"person{i}@example.com", verified=True) for i in range(PEOPLE)]
    async with hub.app[DB].begin() as db:
        services = (await db.scalars(select(Service.id).where(Service.client_id.in_(client_ids)))).all()
        for account_id in (await db.scalars(select(Account.id).where(Account.sub.in_(subs)))).all():
            for service_id in services:
                db.add(Link(account_id=account_id, service_id=service_id, scope="openid profile email"))
    return subs


async def _count(hub: Hub, model: type, client_id: str, *where: Any) -> int:
    async with hub.app[DB]() as db:
        service_id = await db.scalar(select(Service.id).where(Service.client_id == client_id))
        return await db.scalar(select(func.count()).select_from(model).where(model.service_id == service_id, *where)) or 0  # type: ignore[attr-defined]


def _shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ONESIGNIN_TEST_SHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


# Postgres: the delivery engine's batched settle (and its rollups) is Postgres's own statement;
# the pages' rules are tested on both databases over HTTP (test_service_pages.py).
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_admin_sees_a_failing_service_at_a_glance_and_a_service_owner_only_their_own(
    hub: Hub, receivers: Receivers, chromium: Chromium, tmp_path: Path  # noqa: F811
) -> None:
    store = await add_member(hub, receivers, "store")
    forum = await add_member(hub, receivers, "forum")
    store_id, forum_id = store.rp.client_id, forum.rp.client_id
    subs = await _people(hub, store_id, forum_id)
    admin_sub, admin_totp = await add_staff(hub, email="ada@example.com", role="admin")
    owner_sub, owner_totp = await add_staff(hub, email="otto@example.com", role="service_owner")
    receivers["store"].fail_with = 500  # Store's endpoint fails; Forum's answers 204

    admin = await (await chromium.new_context(viewport={"width": 1300, "height": 900})).new_page()
    await _sign_in(admin, hub, "ada@example.com", admin_totp.now())
    # An admin starts at the services, not at people search.
    await expect(admin).to_have_url(hub.url + "/support/services")
    await expect(admin.get_by_role("link", name="Search")).to_have_count(0)
    for name in ("store", "forum"):
        await admin.get_by_role("link", name=name, exact=True).click()
        await admin.get_by_role("button", name="Resync every linked person").click()
        await expect(admin.get_by_role("status").first).to_contain_text(f"Resync started: {PEOPLE} people queued.")
        await admin.goto(hub.url + "/support/services")

    # The burst: Forum receives everyone; Store's deliveries fail until they give up.
    await eventually(lambda: _count(hub, Delivery, forum_id, Delivery.delivered_version >= 1), what="Forum's deliveries")
    await eventually(lambda: _matches(hub, forum_id, PEOPLE), what="every Forum delivery settled")
    await eventually(lambda: _count(hub, DeadLetter, store_id), what="Store's first dead letters")
    await eventually(lambda: _all_dead(hub, store_id), timeout=60, what="every Store delivery given up")
    async with hub.app[DB]() as db:
        answers = (await db.execute(select(Service.client_id, Delivery.last_status, Delivery.last_delay_ms).join(Service))).all()
    assert {(c, s) for c, s, _ in answers} == {(forum_id, 204), (store_id, 500)}
    assert all(ms is not None and ms >= 0 for _, _, ms in answers)

    await admin.goto(f"{hub.url}/support/services/{store_id}")
    await expect(admin.get_by_role("heading", name="store", exact=True)).to_be_visible()
    glance = admin.locator("ul.glance")
    await expect(glance).to_contain_text(re.compile(r"Webhook: (failing|quarantined)"))
    await expect(glance).to_contain_text(f"Dead letters now: {PEOPLE}")
    await expect(glance).to_contain_text("failure rate 100.0%")
    # (The highest bar: the burst may have been in the minute before the page's.)
    failures = admin.get_by_role("img", name=re.compile(r"^Deliveries per minute: answered latest 0, highest 0; failed latest \S+, highest [1-9]"))
    await expect(failures).to_be_visible()
    await expect(admin.get_by_role("img", name=re.compile(r"^Dead letters: given up latest \S+, highest [1-9]"))).to_be_visible()
    await expect(admin.get_by_text("HTTP 500").first).to_be_visible()
    shots = _shots(tmp_path)
    await admin.screenshot(path=str(shots / "sync-health-failing-store.png"), full_page=False)
    await admin.screenshot(path=str(shots / "sync-health-failing-store-full.png"), full_page=True)

    await admin.goto(f"{hub.url}/support/services/{forum_id}")
    await expect(admin.locator("ul.glance")).to_contain_text("Webhook: healthy")
    await expect(admin.get_by_role("status").first).to_contain_text(f"{PEOPLE} of {PEOPLE} people sent")
    answered = re.compile(r"^Deliveries per minute: answered latest \S+, highest [1-9]\S*; failed latest 0, highest 0$")
    await expect(admin.get_by_role("img", name=answered)).to_be_visible()
    await admin.screenshot(path=str(shots / "sync-health-healthy-forum.png"), full_page=False)

    # Store is fixed; one dead letter is sent again from the page and arrives.
    receivers["store"].fail_with = None
    await admin.goto(f"{hub.url}/support/services/{store_id}")
    letter = admin.get_by_role("button", name=re.compile(r"^Redeliver delivery \d+$")).first
    await letter.click()
    await expect(admin.get_by_role("status").first).to_contain_text("Queued again: 1 dead letter.")
    await eventually(lambda: _count(hub, Delivery, store_id, Delivery.delivered_version >= 1), what="the redelivered one")

    # The admin names Forum as the owner's service.
    await admin.get_by_role("link", name="Staff").click()
    await admin.get_by_role("group", name="Services of otto@example.com").get_by_label(forum_id).check()
    await admin.get_by_role("button", name="Save services of otto@example.com").click()
    await expect(admin.get_by_role("heading", name="Staff", exact=True)).to_be_visible()

    # The owner sees Forum alone, people only by sub, and nothing of Store or of a profile.
    owner = await (await chromium.new_context()).new_page()
    await _sign_in(owner, hub, "otto@example.com", owner_totp.now())
    await expect(owner).to_have_url(hub.url + "/support/services")
    await expect(owner.get_by_role("link", name="forum", exact=True)).to_be_visible()
    await expect(owner.get_by_text("store", exact=True)).to_have_count(0)
    await owner.get_by_role("link", name="forum", exact=True).click()
    await expect(owner.get_by_role("heading", name="Recent deliveries")).to_be_visible()
    text = await owner.inner_text("main")
    assert subs[0] in text and "204" in text
    assert "@example.com" not in text and "Settings" not in text
    for path, status in ((f"/support/services/{store_id}", 404), (f"/support/services/{store_id}?window=day", 404),
                         (f"/support/people/{subs[0]}", 403), ("/support/admin/staff", 403), ("/support/audit", 403)):
        answer = await owner.goto(hub.url + path)
        assert answer is not None and answer.status == status, path
        body = await owner.inner_text("body")
        assert "person0@example.com" not in body and "HTTP 500" not in body and store_id not in body
    answer = await owner.goto(hub.url + "/support/?q=person0")
    assert answer is not None and owner.url == hub.url + "/support/services"

    # Every admin look and action is on the record, in order.
    async with hub.app[DB]() as db:
        records = (await db.scalars(select(AuditRecord).where(AuditRecord.actor == admin_sub).order_by(AuditRecord.id))).all()
    changes = [(r.action, (r.detail or {}).get("client_id"), r.account_sub) for r in records if not r.action.startswith("support.")]
    assert changes == [
        ("console.signed_in", None, None),
        ("service.resynced", store_id, None),
        ("service.resynced", forum_id, None),
        ("service.redelivered", store_id, None),
        ("staff.services_set", None, owner_sub),
    ], changes
    looks = [(r.action, (r.detail or {}).get("client_id")) for r in records if r.action.startswith("support.")]
    assert looks.count(("support.service_view", store_id)) == 5 and looks.count(("support.service_view", forum_id)) == 3
    assert looks.count(("support.services_view", None)) == 3 and looks.count(("support.staff_view", None)) == 2
    owner_looks = (await _actions(hub, owner_sub))
    assert ("support.service_view", forum_id) in owner_looks and all(c != store_id for _, c in owner_looks)


async def _matches(hub: Hub, client_id: str, people: int) -> bool:
    return await _count(hub, Delivery, client_id, Delivery.delivered_version >= Delivery.wanted_version) >= people


async def _all_dead(hub: Hub, client_id: str) -> bool:
    return await _count(hub, Delivery, client_id, Delivery.state == "dead") >= PEOPLE


async def _actions(hub: Hub, actor: str) -> list[tuple[str, str | None]]:
    async with hub.app[DB]() as db:
        rows = (await db.scalars(select(AuditRecord).where(AuditRecord.actor == actor).order_by(AuditRecord.id))).all()
    return [(r.action, (r.detail or {}).get("client_id")) for r in rows]
