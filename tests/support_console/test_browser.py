"""The console in a real headless Chromium (Debian's, driven by Playwright) against the hub on
real HTTP, with the real sync pipeline (embedded broker, relay, worker) and a member service's
webhook: an agent signs in with password and TOTP, finds a person, opens their linked profile,
reveals a masked field with a reason and edits a detail; the change reaches the service; every
step is in the audit trail; a person without a staff role is refused."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import Page, expect
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import AuditRecord
from tests.conftest import CHROMIUM
from tests.support import EMBEDDED_DEFAULT, PASSWORD, Browser, Hub
from tests.support_console.signing_in import add_staff
from tests.sync.conftest import (  # noqa: F401
    FAST_SYNC,
    add_member,
    broker,
    kafka_settings,
    link,
    receivers,
)
from tests.sync.receivers import Receivers


# Skipped only outside CI, where Chromium may be missing; CI installs it, and there a missing
# browser is a failure, not a skip.
pytestmark = [
    pytest.mark.e2e,
    EMBEDDED_DEFAULT,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
    ),
]


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    return FAST_SYNC | kafka_settings



@pytest.fixture
async def person_browser(hub: Hub) -> AsyncIterator[Browser]:
    b = Browser(hub)
    yield b
    await b.aclose()


async def _hub_sign_in(page: Page, hub: Hub, email: str) -> None:
    """From /support/login to the hub's own sign-in page, and through it."""
    await page.goto(hub.url + "/support/login")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.url.startswith(hub.url + "/i/")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()


async def test_an_agent_signs_in_finds_reveals_and_edits_and_the_service_hears_of_it(
    hub: Hub, receivers: Receivers, person_browser: Browser, chromium: Chromium  # noqa: F811
) -> None:
    ann = await hub.add_user(email="ann@example.com", verified=True, birthdate="1990-04-12")
    store = await add_member(hub, receivers, "store")
    await link(store, person_browser)
    snapshot = await receivers.wait_for("store", ann, 1)
    assert snapshot["profile"]["given_name"] == "Ann"
    agent_sub, totp = await add_staff(hub, email="sam@example.com", role="agent")

    page = await chromium.new_page()
    # Password at the hub's own sign-in page, then the second factor.
    await _hub_sign_in(page, hub, "sam@example.com")
    await expect(page).to_have_url(hub.url + "/support/totp")
    await page.get_by_label("Code").fill(totp.now())
    await page.get_by_role("button", name="Continue").click()
    await expect(page).to_have_url(hub.url + "/support/")
    await expect(page.get_by_text("sam@example.com (agent)")).to_be_visible()

    # Search (keyboard: type and press Enter), then open the profile.
    await page.get_by_label(re.compile("^Email address")).fill("ann@")
    await page.keyboard.press("Enter")
    await page.get_by_role("link", name="ann@example.com").click()
    await expect(page.get_by_role("heading", name="Ann Example")).to_be_visible()
    birthdate = page.locator("#field-birthdate")
    await expect(birthdate).to_contain_text("(masked)")
    await expect(birthdate).not_to_contain_text("1990")

    # Reveal the date of birth, with a reason.
    await page.get_by_label("Reveal a masked field").select_option("birthdate")
    await page.get_by_label(re.compile("^Why you need to see it")).fill("The caller confirms identity by date of birth")
    await page.get_by_role("button", name="Reveal").click()
    await expect(page.locator("#field-birthdate")).to_contain_text("1990-04-12")

    # Edit a detail, with a reason.
    await page.get_by_label("Given name").fill("Anna")
    await page.get_by_label(re.compile("^Reason for the change")).fill("The person asked on the phone to fix a typo")
    await page.get_by_role("button", name="Save details").click()
    await expect(page.get_by_role("heading", name="Anna Example")).to_be_visible()

    # The change reaches the linked service's webhook, from support.
    updated = await receivers.wait_for("store", ann, 2)
    assert updated["profile"]["given_name"] == "Anna"
    delivery = next(e for e in receivers["store"].received if e["type"] == "profile.updated" and e["data"]["version"] == 2)
    assert "given_name" in delivery["data"]["changed"] and delivery["data"]["origin"]["channel"] == "support"

    # Sign out of the console.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Signed out of the console")).to_be_visible()

    # Every step is in the audit trail, with the agent and the reasons.
    async with hub.app[DB]() as db:
        records = (await db.scalars(select(AuditRecord).where(AuditRecord.actor == agent_sub).order_by(AuditRecord.id))).all()
    steps = [(r.action, r.account_sub) for r in records]
    assert steps == [
        ("console.signed_in", None),
        ("support.search", None),
        ("support.view", ann),
        ("support.reveal", ann),
        ("support.edit", ann),
        ("support.view", ann),
        ("console.signed_out", None),
    ], steps
    reveal = next(r for r in records if r.action == "support.reveal")
    edit = next(r for r in records if r.action == "support.edit")
    assert reveal.reason == "The caller confirms identity by date of birth"
    assert edit.reason == "The person asked on the phone to fix a typo"
    assert all(r.actor_kind == "agent" for r in records)
    await page.close()


async def test_a_person_without_a_staff_role_is_refused(hub: Hub, chromium: Chromium) -> None:
    await hub.add_user(email="ann@example.com", verified=True)
    await add_staff(hub, email="sam@example.com")
    context = await chromium.new_context()
    page = await context.new_page()
    await _hub_sign_in(page, hub, "ann@example.com")
    await expect(page.get_by_role("heading", name="Not available")).to_be_visible()
    assert page.url.startswith(hub.url + "/support/callback")
    assert "cannot use the support console" in await page.inner_text("main")
    assert not [c for c in await context.cookies() if c["name"] == "osi_console"]
    # Nothing in the console opens for them: back to sign-in.
    response = await page.goto(hub.url + "/support/")
    assert response is not None
    assert page.url.startswith(hub.url + "/i/") and "Sign in" in await page.inner_text("h1")
    await context.close()
