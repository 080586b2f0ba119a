"""Two-step sign-in for people: setting up a TOTP authenticator from the account page (QR code
drawn on the server, the key as text, recovery codes shown once and kept as digests), the code
asked for at every password sign-in (the hub's own and a service's), a code used once only,
wrong codes throttled like passwords, recovery codes, and turning it off behind the password."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re

import httpx2
import pyotp
import pytest
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Account, AuditRecord, BrowserSession, SecondFactor
from identity.mail import read_outbox
from tests.cli import onesignin
from tests.support import PASSWORD, Browser, Hub, RelyingParty, form

WRONG = "That code is not right, or was already used."


async def enrol(browser: Browser) -> tuple[pyotp.TOTP, list[str]]:
    """Set up two-step sign-in for the signed-in person: their authenticator and recovery codes."""
    page = await browser.go("/account/two-step")
    uri = re.search(r'<code class="uri">([^<]+)</code>', page.text)
    assert uri is not None
    totp = pyotp.parse_uri(uri.group(1).replace("&amp;", "&"))
    assert isinstance(totp, pyotp.TOTP)
    done = await browser.submit(page, "/account/two-step", code=totp.now())
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", done.text)
    # In whichever language the page speaks: done, with the recovery codes shown once.
    assert done.status_code == 200 and len(codes) == 10, done.text
    return totp, codes


def later(totp: pyotp.TOTP, steps: int = 1) -> str:
    """The code of a later step (still accepted: one step of clock drift either way)."""
    return totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30 * steps))


async def password_step(browser: Browser, email: str = "ann@example.com", next_: str = "/account") -> httpx2.Response:
    page = await browser.go(f"/sign-in?next={next_}")
    return await browser.http.post("/sign-in", data=form(page.text, "/sign-in").fields | {"email": email, "password": PASSWORD})


async def code_step(browser: Browser, code: str) -> httpx2.Response:
    page = await browser.go("/sign-in/code?next=/account")
    return await browser.http.post("/sign-in/code", data=form(page.text, "/sign-in/code").fields | {"code": code})


@pytest.fixture
async def enrolled(hub: Hub, browser: Browser) -> tuple[pyotp.TOTP, list[str]]:
    await hub.add_user(verified=True)
    await browser.sign_in()
    return await enrol(browser)


async def test_setting_up_shows_a_qr_code_the_key_and_recovery_codes_once(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    account = await browser.go("/account")
    assert "Two-step sign-in is off." in account.text and 'href="/account/two-step"' in account.text
    page = await browser.go("/account/two-step")
    assert re.search(r"<svg[^>]*>.*<path", page.text, re.DOTALL), "a QR code drawn as SVG"
    assert "<img" not in page.text
    assert 'autocomplete="one-time-code"' in page.text
    secret = re.search(r'<code class="secret" id="totp-secret">([A-Z2-7 ]+)</code>', page.text)
    assert secret is not None
    uri = re.search(r'<code class="uri">([^<]+)</code>', page.text)
    assert uri is not None and uri.group(1).startswith("otpauth://totp/One%20Sign%20In:ann%40example.com?secret=")
    totp = pyotp.TOTP(secret.group(1).replace(" ", ""))
    # Reloading keeps the same key (it may have been scanned already).
    assert secret.group(1) in (await browser.go("/account/two-step")).text

    wrong = await browser.submit(page, "/account/two-step", code="000000" if totp.now() != "000000" else "111111")
    assert wrong.status_code == 400 and "That code is not right." in wrong.text
    done = await browser.submit(page, "/account/two-step", code=totp.now())
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", done.text)
    assert len(codes) == len(set(codes)) == 10
    manage = await browser.go("/account/two-step")
    assert "You have 10 unused recovery codes." in manage.text
    assert not any(c in manage.text for c in codes), "shown once only"
    assert "Two-step sign-in is <strong>on</strong>" in (await browser.go("/account")).text

    # At rest: the key sealed, the recovery codes as digests.
    async with hub.app[DB]() as db:
        factor = await db.scalar(select(SecondFactor))
    assert factor is not None and factor.confirmed_at is not None
    stored = factor.totp_secret + " ".join(factor.recovery_codes)
    assert secret.group(1).replace(" ", "") not in stored
    assert not any(c in stored or c.replace("-", "") in stored for c in codes)


async def test_every_password_sign_in_then_asks_for_the_code(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    totp, _ = enrolled
    other = Browser(hub)
    try:
        first = await password_step(other)
        assert first.status_code == 303 and first.headers["location"] == "/sign-in/code?next=/account"
        # Not signed in yet.
        assert (await other.go("/account")).url.path == "/sign-in"
        page = await other.go("/sign-in/code?next=/account")
        assert 'autocomplete="one-time-code"' in page.text
        done = await code_step(other, later(totp))
        assert done.status_code == 303 and done.headers["location"] == "/account"
        assert "Your account" in (await other.go("/account")).text
        async with hub.app[DB]() as db:
            amrs = (await db.scalars(select(BrowserSession.amr).order_by(BrowserSession.id))).all()
        assert amrs == ["pwd", "pwd otp"]
    finally:
        await other.aclose()


async def test_a_code_cannot_be_used_twice(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    totp, _ = enrolled
    code = later(totp)
    await password_step(browser)
    assert (await code_step(browser, code)).status_code == 303
    await password_step(browser)
    again = await code_step(browser, code)
    assert again.status_code == 400 and WRONG in again.text
    # Nor an older one, once a newer one was used.
    await password_step(browser)
    assert (await code_step(browser, totp.now())).status_code == 400


async def test_the_code_step_needs_the_password_step_first(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    totp, _ = enrolled
    stranger = Browser(hub)
    try:
        page = await stranger.go("/sign-in/code?next=/account")
        assert page.status_code == 400 and "Sign in again" in page.text
        signin = await stranger.go("/sign-in")
        forged = await stranger.http.post("/sign-in/code", data=form(signin.text, "/sign-in").fields | {"code": later(totp)})
        assert forged.status_code == 400 and "Sign in again" in forged.text
        assert "osi_session" not in forged.cookies
    finally:
        await stranger.aclose()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"throttle_account_failures": 3}


async def test_wrong_codes_are_throttled_like_passwords(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    totp, _ = enrolled
    await password_step(browser)
    wrong = "000000" if later(totp) != "000000" else "111111"
    statuses = [(await code_step(browser, wrong)).status_code for _ in range(3)]
    assert statuses == [400, 400, 429]
    # While the wait runs, even the right code is refused.
    refused = await code_step(browser, later(totp))
    assert refused.status_code == 429 and "Too many wrong codes" in refused.text


async def test_a_recovery_code_signs_in_once(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    _, codes = enrolled
    await password_step(browser)
    assert (await code_step(browser, codes[0].upper())).status_code == 303
    await password_step(browser)
    assert (await code_step(browser, codes[0])).status_code == 400
    assert "You have 9 unused recovery codes." in (await browser.go("/account/two-step")).text


async def test_new_recovery_codes_replace_the_old_ones(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    _, old = enrolled
    page = await browser.go("/account/two-step")
    refused = await browser.submit(page, "/account/two-step/recovery-codes", current_password="not my password")
    assert refused.status_code == 400
    done = await browser.submit(page, "/account/two-step/recovery-codes", current_password=PASSWORD)
    new = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", done.text)
    assert len(new) == 10 and not set(new) & set(old)
    await password_step(browser)
    assert (await code_step(browser, old[1])).status_code == 400
    await password_step(browser)
    assert (await code_step(browser, new[1])).status_code == 303


async def test_removing_the_factor_needs_the_password(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    page = await browser.go("/account/two-step")
    refused = await browser.submit(page, "/account/two-step/remove", current_password="not my password")
    assert refused.status_code == 400 and "Your password is not correct." in refused.text
    async with hub.app[DB]() as db:
        assert await db.scalar(select(SecondFactor)) is not None
    done = await browser.submit(page, "/account/two-step/remove", current_password=PASSWORD)
    assert "Two-step sign-in is off: signing in needs only your password now." in done.text
    direct = await password_step(browser)
    assert direct.status_code == 303 and direct.headers["location"] == "/account"


async def test_a_service_sign_in_asks_for_the_code_too(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    totp, _ = enrolled
    service = await hub.add_service(name="Garden Centre")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    fresh = Browser(hub)
    try:
        url, kept = await rp.start()
        page = await fresh.go(url)
        asked = await fresh.http.post(
            form(page.text, "/i/").action, data=form(page.text, "/i/").fields | {"email": "ann@example.com", "password": PASSWORD}
        )
        assert asked.status_code == 303 and asked.headers["location"].startswith("/sign-in/code?next=/i/")
        code_page = await fresh.go(asked.headers["location"])
        done = await fresh.submit(code_page, "/sign-in/code", code=later(totp))
        assert "Allow Garden Centre to use your account?" in done.text
        callback = await fresh.submit(done, "/i/", decision="allow")
        assert callback.status_code in (302, 303)
        token = await rp.finish(callback.headers["location"], kept)
        assert token["access_token"]
    finally:
        await fresh.aclose()


@pytest.mark.e2e
async def test_an_operator_can_remove_a_lost_factor(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    async with hub.app[DB]() as db:
        sub = await db.scalar(select(Account.sub))
    env = os.environ | {"ONESIGNIN_DATA_DIR": str(hub.settings.data_dir), "ONESIGNIN_DATABASE_URL": hub.settings.database_url, "ONESIGNIN_SECRET_KEY": "c" * 40}
    done = await asyncio.to_thread(onesignin, env, "users", "remove-second-factor", "--sub", sub, "--operator", "ops@example.com", "--reason", "ticket 9")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"sub": sub, "second_factor": "removed", "authenticator_app": True, "passkeys_removed": 0}
    again = await asyncio.to_thread(onesignin, env, "users", "remove-second-factor", "--sub", sub)
    assert again.returncode == 2 and "has no second factor" in again.stderr
    direct = await password_step(browser)
    assert direct.status_code == 303 and direct.headers["location"] == "/account"
    async with hub.app[DB]() as db:
        record = await db.scalar(select(AuditRecord).where(AuditRecord.action == "account.second_factor_removed"))
    assert record is not None and (record.actor, record.account_sub, record.reason) == ("ops@example.com", sub, "ticket 9")
    assert record.detail == {"authenticator_app": True, "passkeys": 0}


async def test_each_change_is_mailed_to_the_account(hub: Hub, browser: Browser, enrolled: tuple[pyotp.TOTP, list[str]]) -> None:
    page = await browser.go("/account/two-step")
    await browser.submit(page, "/account/two-step/recovery-codes", current_password=PASSWORD)
    page = await browser.go("/account/two-step")
    await browser.submit(page, "/account/two-step/remove", current_password=PASSWORD)
    mails = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "ann@example.com"]
    assert [m["Subject"] for m in mails] == ["Two-step sign-in is on", "New recovery codes", "Two-step sign-in is off"]
    assert f"{hub.url}/reset-password" in mails[-1].get_content()
