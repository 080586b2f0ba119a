"""Signing in to the console over real HTTP: the hub's own login (the console is its first-party
client), then TOTP; refusals that reveal nothing; sessions separate from the hub's."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, update

from identity.appkeys import DB
from identity.db.models import (
    Consent,
    ConsoleSession,
    Link,
    Service,
    StaffMember,
    utcnow,
)
from identity.support import console_client, session, staff
from tests.support import PASSWORD, Browser, Hub, form
from tests.support_console.signing_in import (
    add_staff,
    audit_actions,
    password_step,
    totp_step,
)


@pytest.fixture
async def browser(hub: Hub) -> AsyncIterator[Browser]:
    b = Browser(hub)
    yield b
    await b.aclose()


async def test_password_then_totp_opens_the_console_with_a_new_session(hub: Hub, browser: Browser) -> None:
    sub, totp = await add_staff(hub, role="supervisor")
    page = await password_step(browser)
    assert page.status_code == 200 and "Two-factor code" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    half_signed_in = browser.http.cookies.get(session.COOKIE)
    assert half_signed_in
    # Half signed in opens nothing but the code page.
    assert (await browser.http.get("/support/agents")).headers["location"] == "/support/login"

    await sign_in_code(browser, totp.now())
    signed_in = browser.http.cookies.get(session.COOKIE)
    assert signed_in and signed_in != half_signed_in
    agents = await browser.http.get("/support/agents")
    assert agents.status_code == 200 and "agent@example.com" in agents.text

    # No fixation: the first secret died with the second factor.
    stale = Browser(hub)
    stale.http.cookies.set(session.COOKIE, half_signed_in, path="/support")
    assert (await stale.http.get("/support/agents")).status_code == 303
    await stale.aclose()

    # The console is first party: no consent screen was shown, and no link or consent recorded.
    async with hub.app[DB]() as db:
        console = await db.scalar(select(Service).where(Service.client_id == console_client.CLIENT_ID))
        assert console is not None and console.first_party
        assert console.redirect_uris == [hub.url + "/support/callback"]
        assert await db.scalar(select(func.count()).select_from(Link)) == 0
        assert await db.scalar(select(func.count()).select_from(Consent)) == 0
    assert await audit_actions(hub, sub) == ["console.signed_in"]


async def sign_in_code(browser: Browser, code: str) -> None:
    page = await browser.go("/support/totp")
    done = await totp_step(browser, page, code)
    assert done.status_code == 303 and done.headers["location"] == "/support/", done.text[:300]


async def test_wrong_codes_are_refused_and_five_end_the_attempt(hub: Hub, browser: Browser) -> None:
    await add_staff(hub)
    page = await password_step(browser)
    for attempt in range(1, 6):
        wrong = await totp_step(browser, page, "000000" if attempt % 2 else "12345")
        if attempt < 5:
            assert wrong.status_code == 400 and "wrong or was already used" in wrong.text
            page = wrong
    assert wrong.status_code == 403 and "Too many wrong codes" in wrong.text
    async with hub.app[DB]() as db:
        row = (await db.scalars(select(ConsoleSession))).one()
        assert row.totp_failures == 5 and row.ended_at is not None and row.stage == "totp"
    # The ended attempt cannot go on, even with the right code.
    assert (await browser.http.get("/support/totp")).headers["location"] == "/support/login"


async def test_a_used_code_is_refused_the_next_one_is_accepted(hub: Hub, browser: Browser) -> None:
    _, totp = await add_staff(hub, role="supervisor")
    now = dt.datetime.now(dt.UTC)
    code = totp.at(now)
    await password_step(browser)
    await sign_in_code(browser, code)
    signed_out = await browser.submit(await browser.go("/support/agents"), "/support/logout")
    assert signed_out.status_code == 200

    page = await password_step(browser)
    replayed = await totp_step(browser, page, code)
    assert replayed.status_code == 400 and "already used" in replayed.text
    # One step of clock drift is allowed; the next step's code is new, so it is accepted.
    await sign_in_code(browser, totp.at(now + dt.timedelta(seconds=30)))
    # ...and codes from before it are now all spent.
    async with hub.app[DB]() as db:
        member = (await db.scalars(select(StaffMember))).one()
        assert member.totp_last_step == totp.timecode(now) + 1


async def test_a_person_without_a_staff_role_is_refused_and_learns_nothing(hub: Hub, browser: Browser) -> None:
    await hub.add_user(email="ann@example.com", verified=True)
    await add_staff(hub, email="gone@example.com")
    async with hub.app[DB].begin() as db:
        await staff.disable(db, email="gone@example.com")

    refused = await password_step(browser, "ann@example.com")
    assert refused.status_code == 403
    assert "cannot use the support console" in refused.text
    assert session.COOKIE not in browser.http.cookies

    other = Browser(hub)
    disabled = await password_step(other, "gone@example.com")
    await other.aclose()
    # Disabled staff and a person who never was staff see the very same page.
    assert disabled.status_code == 403 and disabled.text == refused.text
    for word in ("disabled", "staff", "agent", "role"):
        assert word not in refused.text.lower().replace("support console", "")
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(ConsoleSession)) == 0


async def test_the_customer_session_opens_nothing_and_outlives_the_console(hub: Hub, browser: Browser) -> None:
    _, totp = await add_staff(hub, role="supervisor")
    await browser.sign_in("agent@example.com")
    assert (await browser.go("/account")).status_code == 200
    # Signed in to the hub, not to the console.
    assert (await browser.http.get("/support/agents")).headers["location"] == "/support/login"
    assert (await browser.http.post("/support/agents", data={})).status_code == 401
    # The console always asks for the password again (prompt=login), even over a hub session.
    await password_step(browser)
    await sign_in_code(browser, totp.now())

    page = await browser.go("/support/agents")
    no_token = await browser.http.post("/support/logout", data={})
    assert no_token.status_code == 403
    signed_out = await browser.submit(page, "/support/logout")
    assert signed_out.status_code == 200 and "Your hub account stays signed in" in signed_out.text
    assert (await browser.http.get("/support/agents")).headers["location"] == "/support/login"
    account = await browser.go("/account")
    assert account.status_code == 200 and "agent@example.com" in account.text


async def test_an_idle_session_ends(hub: Hub, browser: Browser) -> None:
    sub, totp = await add_staff(hub, role="supervisor")
    await password_step(browser)
    await sign_in_code(browser, totp.now())
    assert (await browser.http.get("/support/agents")).status_code == 200
    idle = dt.timedelta(seconds=hub.settings.console_idle_ttl + 1)
    async with hub.app[DB].begin() as db:
        await db.execute(update(ConsoleSession).values(last_seen_at=utcnow() - idle))
    assert (await browser.http.get("/support/agents")).headers["location"] == "/support/login"
    assert await audit_actions(hub, sub) == ["console.signed_in"]


async def test_a_forged_or_tampered_callback_signs_nobody_in(hub: Hub, browser: Browser) -> None:
    await add_staff(hub)
    page = await browser.go("/support/login")
    # A callback with no sign-in started in this browser.
    stranger = Browser(hub)
    forged = await stranger.http.get("/support/callback?code=x&state=y&iss=" + hub.url)
    await stranger.aclose()
    assert forged.status_code == 400 and "expired" in forged.text
    # The real callback with its state altered.
    sign_in_form = form(page.text, "/i/")
    answer = await browser.http.post(sign_in_form.action, data=sign_in_form.fields | {"email": "agent@example.com", "password": PASSWORD})
    resumed = await browser.http.get(answer.headers["location"])
    callback = resumed.headers["location"]
    assert callback.startswith(hub.url + "/support/callback?")
    tampered = await browser.http.get(callback.replace("state=", "state=x"))
    assert tampered.status_code == 400
    assert session.COOKIE not in browser.http.cookies
