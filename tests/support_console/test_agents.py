"""Supervisors manage staff at /support/agents; agents may not. Secrets never show, except the new
staff member's TOTP URI, once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pyotp
import pytest
from httpx2 import Response
from sqlalchemy import select

from identity.db.models import Account, AuditRecord, ConsoleSession, StaffMember
from identity.web.appkeys import DB
from tests.support import PASSWORD, Browser, Hub, forms
from tests.support_console.helpers import COOKIE, staff_session
from tests.support_console.signing_in import add_staff, password_step, sign_in


@pytest.fixture
async def browser(hub: Hub) -> AsyncIterator[Browser]:
    b = Browser(hub)
    yield b
    await b.aclose()


async def _console(hub: Hub, role: str, email: str) -> tuple[Browser, str]:
    cookie, sub = await staff_session(hub, role, email)  # type: ignore[arg-type]
    b = Browser(hub)
    b.http.cookies.set(COOKIE, cookie, path="/support")
    return b, sub


async def test_a_supervisor_adds_an_agent_who_can_then_sign_in(hub: Hub, browser: Browser) -> None:
    boss, boss_sub = await _console(hub, "supervisor", "boss@example.com")
    page = await boss.go("/support/agents")
    assert page.status_code == 200 and "boss@example.com" in page.text

    weak = await _add(boss, page, email="new@example.com", password="password123", role="agent")
    assert weak.status_code == 400 and "too common" in weak.text

    added = await _add(boss, page, email="new@example.com", password=PASSWORD, role="agent")
    assert added.status_code == 201
    uri = added.text.split('<code id="totp-uri">')[1].split("</code>")[0].replace("&amp;", "&")
    assert uri.startswith("otpauth://totp/One%20Sign%20In:new%40example.com?")
    totp = pyotp.parse_uri(uri)

    listing = await boss.go("/support/agents")
    assert "new@example.com" in listing.text
    secret = uri.split("secret=")[1].split("&")[0]
    async with hub.app[DB]() as db:
        stored = (await db.scalars(select(StaffMember.totp_secret))).all()
        hashes = (await db.scalars(select(Account.password_hash))).all()
    for hidden in (secret, *stored, *hashes):
        assert hidden not in listing.text
    assert "$argon2" not in listing.text

    # Adding the same person again is refused; the URI is not shown again.
    again = await _add(boss, listing, email="new@example.com", password=PASSWORD, role="agent")
    assert again.status_code == 400 and "already staff" in again.text and "otpauth" not in again.text

    assert isinstance(totp, pyotp.TOTP)
    await password_step(browser, "new@example.com")
    await sign_in(browser, totp, "new@example.com")
    # An agent does not manage agents.
    assert (await browser.http.get("/support/agents")).status_code == 403
    denied = await browser.http.post("/support/agents", data={"email": "x@example.com", "password": PASSWORD, "role": "supervisor"})
    assert denied.status_code == 403
    await boss.aclose()

    async with hub.app[DB]() as db:
        records = (await db.execute(select(AuditRecord.action, AuditRecord.actor, AuditRecord.detail).where(AuditRecord.action == "staff.added"))).all()
    assert [(r.actor, r.detail) for r in records] == [(boss_sub, {"role": "agent"})]


async def test_a_supervisor_changes_a_role_and_disables_an_agent(hub: Hub) -> None:
    boss, boss_sub = await _console(hub, "supervisor", "boss@example.com")
    agent, agent_sub = await _console(hub, "agent", "sam@example.com")
    assert (await agent.http.get("/support/agents")).status_code == 403

    page = await boss.go("/support/agents")
    promoted = await boss.submit(page, f"/support/agents/{agent_sub}/role", role="supervisor")
    assert promoted.status_code == 200
    assert (await agent.http.get("/support/agents")).status_code == 200

    # Not one's own account.
    assert f"/support/agents/{boss_sub}/role" not in promoted.text
    own = await boss.http.post(f"/support/agents/{boss_sub}/disable", data={"csrf_token": _token(promoted.text)})
    assert own.status_code == 403

    no_csrf = await boss.http.post(f"/support/agents/{agent_sub}/disable", data={})
    assert no_csrf.status_code == 403
    disabled = await boss.submit(promoted, f"/support/agents/{agent_sub}/disable")
    assert disabled.status_code == 200 and "disabled" in disabled.text
    # Their console session ended at once.
    assert (await agent.http.get("/support/agents")).headers["location"] == "/support/login"
    async with hub.app[DB]() as db:
        sessions = (await db.scalars(select(ConsoleSession).join(StaffMember).join(Account).where(Account.sub == agent_sub))).all()
        actions = (await db.scalars(select(AuditRecord.action).where(AuditRecord.actor == boss_sub).order_by(AuditRecord.id))).all()
    assert sessions and all(s.ended_at is not None for s in sessions)
    assert actions == ["staff.role_changed", "staff.disabled"]
    await boss.aclose()
    await agent.aclose()


async def test_re_adding_a_disabled_agent_makes_a_new_secret(hub: Hub, browser: Browser) -> None:
    _, first = await add_staff(hub)
    boss, _ = await _console(hub, "supervisor", "boss@example.com")
    page = await boss.go("/support/agents")
    sub = (await _sub(hub, "agent@example.com"))
    page = await boss.submit(page, f"/support/agents/{sub}/disable")
    wrong = await _add(boss, page, email="agent@example.com", password="not the password at all", role="agent")
    assert wrong.status_code == 400 and "does not match" in wrong.text
    again = await _add(boss, page, email="agent@example.com", password=PASSWORD, role="agent")
    assert again.status_code == 201
    second = pyotp.parse_uri(again.text.split('<code id="totp-uri">')[1].split("</code>")[0].replace("&amp;", "&"))
    assert isinstance(second, pyotp.TOTP) and second.secret != first.secret
    await password_step(browser)
    await sign_in(browser, second)
    await boss.aclose()


async def _sub(hub: Hub, email: str) -> str:
    async with hub.app[DB]() as db:
        sub = await db.scalar(select(Account.sub).where(Account.email == email))
    assert sub
    return sub


async def _add(boss: Browser, page: Response, **values: str) -> Response:
    """Submit the "Add an agent" form (the rows' forms post to longer paths)."""
    (add,) = [f for f in forms(page.text) if f.action == "/support/agents"]
    return await boss.go(add.action, method="POST", data=add.fields | values)


def _token(page: str) -> str:
    return page.split('name="csrf_token" value="')[1].split('"')[0]
