"""The audit trail: supervisors read it in the console (agents get 403), operators with
`onesignin audit list`, and the person in their own export. A customer session opens nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx2
import pytest

from tests.cli import onesignin
from tests.support import Hub
from tests.support_console.console import audit_records, console_for, linked_person
from tests.support_console.helpers import COOKIE


async def test_agents_get_403_on_the_trail_and_see_no_audit_on_profiles(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    try:
        trail = await console.get("/support/audit")
        profile = await console.get(f"/support/people/{person.sub}")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert trail.status_code == 403 and "support.view" not in trail.text
    assert profile.status_code == 200
    assert "Audit trail of this account" not in profile.text and 'href="/support/audit"' not in profile.text


async def test_supervisors_read_the_trail_newest_first_by_account_a_page_at_a_time(hub: Hub) -> None:
    person = await linked_person(hub)
    agent = await console_for(hub)
    supervisor = await console_for(hub, "supervisor")
    try:
        for _ in range(51):
            await agent.get("/support/", q="nobody@example.com")
        page = await agent.get(f"/support/people/{person.sub}")
        await agent.submit(page, f"/support/people/{person.sub}/reveal", field="phone_number", reason="caller asked to confirm it")

        everything = await supervisor.get("/support/audit")
        older = everything.text.split('<a href="')[-1].split('"')[0].replace("&amp;", "&")
        assert "Older records" in everything.text and "before=" in older
        second = await supervisor.get(older)
        mine = await supervisor.get("/support/audit", account=person.sub)
        profile = await supervisor.get(f"/support/people/{person.sub}")
    finally:
        await agent.aclose()
        await supervisor.aclose()
        await person.browser.aclose()
    assert everything.status_code == 200
    first_rows = everything.text.count("<tr><td>")
    assert first_rows == 50 and second.text.count("<tr><td>") == 53 - 50
    # Newest first: the reveal, its reason and field, then the view before it.
    reveal_at, view_at = everything.text.index("support.reveal"), everything.text.index("support.view")
    assert reveal_at < view_at and "caller asked to confirm it" in everything.text and "phone_number" in everything.text
    assert agent.sub in everything.text and "agent@example.com" in everything.text  # who, by address too
    assert mine.text.count("<tr><td>") == 2 and "support.search" not in mine.text
    assert "Audit trail of this account" in profile.text and "support.reveal" in profile.text


async def test_a_person_with_only_a_customer_session_gets_nothing(hub: Hub) -> None:
    person = await linked_person(hub)
    customer = person.browser.http
    customer_secret = customer.cookies.get("osi_session")
    assert customer_secret
    try:
        pages = [await customer.get(path) for path in ("/support/", f"/support/people/{person.sub}", "/support/audit")]
        action = await customer.post(f"/support/people/{person.sub}/edit", data={"family_name": "X", "reason": "mine"})
        # The customer session's own secret does not open a console session either.
        async with httpx2.AsyncClient(base_url=hub.url, cookies={COOKIE: customer_secret}, timeout=30) as http:
            borrowed = await http.get(f"/support/people/{person.sub}")
    finally:
        await person.browser.aclose()
    for page in (*pages, borrowed):
        assert page.status_code == 303 and page.headers["location"] == "/support/login"
        assert "ann@example.com" not in page.text
    assert action.status_code == 401
    assert await audit_records(hub) == []


async def test_the_persons_export_lists_the_agents_who_viewed_the_account(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    try:
        await console.get(f"/support/people/{person.sub}")
        exported = await person.browser.go("/account/export")
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert exported.status_code == 200
    audit = exported.json()["audit"]
    assert [(a["actor_kind"], a["actor"], a["action"]) for a in audit] == [("agent", console.sub, "support.view")]
    assert audit[0]["at"]


@pytest.mark.e2e
async def test_audit_list_prints_the_accounts_records_as_a_json_array(hub: Hub, database_url: str, tmp_path: Path) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    try:
        page = await console.get(f"/support/people/{person.sub}")
        await console.submit(page, f"/support/people/{person.sub}/edit", given_name="Anna", reason="Caller corrected it")
        await console.get("/support/", q="ann@example.com")
    finally:
        await console.aclose()
        await person.browser.aclose()
    env = os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": "s" * 40,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return onesignin(env, "audit", "list", *args)

    done = run("--account", person.sub)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert isinstance(records, list)
    assert [(r["action"], r["actor_kind"], r["actor"], r["account_sub"]) for r in records] == [
        ("support.view", "agent", console.sub, person.sub),
        ("support.edit", "agent", console.sub, person.sub),
        ("support.view", "agent", console.sub, person.sub),
    ]
    assert records[1]["reason"] == "Caller corrected it" and records[1]["detail"] == {"fields": ["given_name", "name"]}
    assert set(records[0]) == {"id", "at", "actor_kind", "actor", "account_sub", "action", "reason", "detail"}

    unknown = run("--account", "0b9a2f7e-0000-4000-8000-000000000000")
    assert unknown.returncode == 0 and json.loads(unknown.stdout) == []
    missing = run()
    assert missing.returncode != 0 and "--account" in missing.stderr
