"""Supervisors manage staff at /support/agents; agents may not. Secrets never show there: a
supervisor grants a role to an existing hub account, and the new staff member enrols their own
authenticator at their first sign-in, so a supervisor never holds both factors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pyotp
import pytest
from httpx2 import Response
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Account, AuditRecord, ConsoleSession, StaffMember
from tests.support import Browser, Hub, forms
from tests.support_console.helpers import COOKIE, staff_session
from tests.support_console.signing_in import add_staff, password_step, totp_step


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


def _enrol_uri(page: Response) -> str:
    return page.text.split('<code id="totp-uri">')[1].split("</code>")[0].replace("&amp;", "&")


async def test_a_supervisor_grants_a_role_and_the_agent_enrols_at_first_sign_in(hub: Hub, browser: Browser) -> None:
    boss, boss_sub = await _console(hub, "supervisor", "boss@example.com")
    page = await boss.go("/support/agents")
    assert page.status_code == 200 and "boss@example.com" in page.text
    # No password field: the supervisor types none (and so learns nothing of anyone's).
    assert 'name="password"' not in page.text

    nobody = await _add(boss, page, email="new@example.com", role="agent")
    assert nobody.status_code == 400 and "registers at the hub first" in nobody.text
    new_sub = await hub.add_user(email="new@example.com", verified=True)
    added = await _add(boss, page, email="new@example.com", role="agent")
    assert added.status_code == 201 and "new@example.com" in added.text
    assert "otpauth" not in added.text and "secret" not in added.text.lower()

    listing = await boss.go("/support/agents")
    assert "new@example.com" in listing.text and "otpauth" not in listing.text
    async with hub.app[DB]() as db:
        member = await db.scalar(select(StaffMember).join(Account).where(Account.sub == new_sub))
        assert member is not None and member.totp_confirmed_at is None
        stored = (await db.scalars(select(StaffMember.totp_secret))).all()
        hashes = (await db.scalars(select(Account.password_hash))).all()
    for hidden in (*stored, *hashes):
        assert hidden not in listing.text
    assert "$argon2" not in listing.text

    # Adding the same person again is refused.
    again = await _add(boss, listing, email="new@example.com", role="agent")
    assert again.status_code == 400 and "already staff" in again.text and "otpauth" not in again.text

    # Their own first sign-in: password, then their own setup URI, then a first code.
    page = await password_step(browser, "new@example.com")
    assert page.status_code == 200 and "Set up two-factor sign-in" in page.text and "<script" not in page.text
    uri = _enrol_uri(page)
    assert uri.startswith("otpauth://totp/One%20Sign%20In:new%40example.com?")
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    # Until confirmed, the half-signed-in session opens nothing.
    assert (await browser.http.get("/support/")).headers["location"] == "/support/login"
    done = await totp_step(browser, page, totp.now())
    assert done.status_code == 303 and done.headers["location"] == "/support/"
    async with hub.app[DB]() as db:
        member = await db.scalar(select(StaffMember).join(Account).where(Account.sub == new_sub))
        assert member is not None and member.totp_confirmed_at is not None
    # An agent does not manage agents.
    assert (await browser.http.get("/support/agents")).status_code == 403
    denied = await browser.http.post("/support/agents", data={"email": "x@example.com", "role": "supervisor"})
    assert denied.status_code == 403
    await boss.aclose()

    # The next sign-in asks for a code only: the enrolment page is not shown again.
    other = Browser(hub)
    page = await password_step(other, "new@example.com")
    assert "Set up" not in page.text and "otpauth" not in page.text
    await other.aclose()

    async with hub.app[DB]() as db:
        records = (await db.execute(select(AuditRecord.action, AuditRecord.actor, AuditRecord.detail).where(AuditRecord.action == "staff.added"))).all()
        enrolled = (await db.scalars(select(AuditRecord.actor).where(AuditRecord.action == "console.totp_enrolled"))).all()
    assert [(r.actor, r.detail) for r in records] == [(boss_sub, {"role": "agent"})]
    assert enrolled == [new_sub]


async def test_an_enrolment_uri_is_new_at_every_sign_in_until_confirmed(hub: Hub, browser: Browser) -> None:
    boss, _ = await _console(hub, "supervisor", "boss@example.com")
    await hub.add_user(email="new@example.com", verified=True)
    assert (await _add(boss, await boss.go("/support/agents"), email="new@example.com", role="agent")).status_code == 201
    await boss.aclose()
    first = _enrol_uri(await password_step(browser, "new@example.com"))
    other = Browser(hub)
    second_page = await password_step(other, "new@example.com")
    second = _enrol_uri(second_page)
    assert first != second
    # The earlier, unconfirmed secret is gone.
    stale = pyotp.parse_uri(first)
    assert isinstance(stale, pyotp.TOTP)
    refused = await totp_step(other, second_page, stale.now())
    assert refused.status_code == 400
    await other.aclose()


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


async def test_re_adding_a_disabled_agent_makes_them_enrol_again(hub: Hub, browser: Browser) -> None:
    _, first = await add_staff(hub)
    boss, _ = await _console(hub, "supervisor", "boss@example.com")
    page = await boss.go("/support/agents")
    sub = (await _sub(hub, "agent@example.com"))
    page = await boss.submit(page, f"/support/agents/{sub}/disable")
    again = await _add(boss, page, email="agent@example.com", role="agent")
    assert again.status_code == 201 and "otpauth" not in again.text
    page = await password_step(browser)
    second = pyotp.parse_uri(_enrol_uri(page))
    assert isinstance(second, pyotp.TOTP) and second.secret != first.secret
    # The old authenticator no longer works.
    assert (await totp_step(browser, page, first.now())).status_code == 400
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
