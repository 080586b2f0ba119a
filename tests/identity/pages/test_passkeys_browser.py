"""Passkeys in a real headless Chromium, with a virtual authenticator (Chrome DevTools Protocol:
CTAP2, built in, resident keys and user verification): adding one from the account page,
signing in with it and no password (at the hub and for a service, whose ID token says
``["hwk", "user"]``), using it as the step after the password (``["pwd", "hwk", "user", "mfa"]``),
a replayed answer refused, a counter that went backwards refused, and removing it. The hub's
issuer is ``http://localhost:PORT`` (``localhost_hub``): browsers refuse WebAuthn on an IP address.
Screenshots of the account page's passkeys and of the sign-in page, at 390 and 1280 px, go to the
test's directory (and to ``$ONESIGNIN_SCREENSHOTS`` when set)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import BrowserContext, Page, Route, expect
from sqlalchemy import select, update

from identity.appkeys import DB
from identity.db.models import AuditRecord, BrowserSession, Passkey, utcnow
from identity.mail import read_outbox
from identity.oidc import assurance
from tests.conftest import CHROMIUM
from tests.identity.pages.test_account_browser import OVERFLOW, _shots
from tests.support import EMBEDDED_DEFAULT, PASSWORD, Hub, RelyingParty, eventually

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
    ),
]



#: Turns the browser's passkey autofill off (the virtual authenticator answers an autofill
#: request at once, before the page's button could be clicked).
NO_AUTOFILL = "PublicKeyCredential.isConditionalMediationAvailable = () => Promise.resolve(false);"


async def with_authenticator(context: BrowserContext, page: Page) -> tuple[Any, str]:
    """A platform authenticator for this page: CTAP2, internal, resident keys, user verification."""
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    added = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, added["authenticatorId"]


async def password_sign_in(page: Page, hub: Hub, next_: str = "/account") -> None:
    await page.goto(f"{hub.url}/sign-in?next={next_}")
    await page.get_by_label("Email address").fill("ann@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in", exact=True).click()


async def add_passkey(page: Page, hub: Hub, name: str = "Work laptop") -> None:
    await page.goto(hub.url + "/account")
    await page.get_by_label("Name for the new passkey").fill(name)
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(page.get_by_text("Your passkey is added")).to_be_visible()


async def sign_out(page: Page, hub: Hub) -> None:
    await page.goto(hub.url + "/account")
    await page.get_by_role("button", name="Sign out", exact=True).click()
    await expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()


async def session_amr(hub: Hub) -> str:
    async with hub.app[DB].begin() as db:
        row = await db.scalar(select(BrowserSession).where(BrowserSession.ended_at.is_(None)).order_by(BrowserSession.id.desc()))
        assert row is not None
        return row.amr


async def through_service(page: Page, rp: RelyingParty, sign_in: Any, *, consent: bool = True, **params: str) -> dict[str, Any]:
    """The code flow in the browser: ``sign_in(page)`` at the hub, consent (the first time),
    then the RP's token request and ID token validation with authlib. Returns the ID token's
    claims."""
    url, kept = await rp.start(**params)
    callbacks: list[str] = []

    async def callback(route: Route) -> None:
        callbacks.append(route.request.url)
        await route.fulfill(status=200, body="back at the service")

    await page.route(rp.redirect_uri.split("/callback")[0] + "/**", callback)
    await page.goto(url)
    await sign_in(page)
    if consent:
        await page.get_by_role("button", name="Allow").click()
    await eventually(lambda: _true(callbacks), what="the redirect back to the service")
    await page.unroute(rp.redirect_uri.split("/callback")[0] + "/**")
    token = await rp.finish(callbacks[0], kept)
    return dict(await rp.validate_id_token(token, kept["nonce"]))


async def _true(items: list[str]) -> bool:
    return bool(items)


async def mails(hub: Hub, subject: str) -> int:
    return len([m for m in read_outbox(hub.settings.data_dir / "mail") if m["Subject"] == subject])


@EMBEDDED_DEFAULT
async def test_a_passkey_signs_in_without_a_password_and_serves_as_the_second_step(localhost_hub: Hub, chromium: Chromium) -> None:
    hub = localhost_hub
    await hub.add_user(verified=True)
    service = await hub.add_service(name="Garden Centre")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    context = await chromium.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    cdp, authenticator = await with_authenticator(context, page)

    # Added from the account page: listed with its name; mailed and audited.
    await password_sign_in(page, hub)
    await expect(page.get_by_role("heading", name="Passkeys")).to_be_visible()
    await expect(page.get_by_text("You have no passkeys yet.")).to_be_visible()
    await add_passkey(page, hub)
    listed = page.locator("ul.passkeys li")
    await expect(listed).to_have_count(1)
    await expect(listed).to_contain_text("Work laptop")
    await expect(listed).to_contain_text("not used yet")
    await eventually(lambda: _is(mails(hub, "A passkey was added"), 1), what="the mail about the new passkey")
    stored = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))["credentials"]
    assert len(stored) == 1 and stored[0]["isResidentCredential"] is True
    async with hub.app[DB].begin() as db:
        key = (await db.scalars(select(Passkey))).one()
        assert key.name == "Work laptop" and key.transports == ["internal"] and not key.backup_eligible
        assert (await db.scalars(select(AuditRecord.action).where(AuditRecord.action.like("account.passkey%")))).all() == ["account.passkey_added"]

    # Signed out, the sign-in page offers it in the email field's autofill (conditional
    # mediation: the virtual authenticator picks the passkey at once) ...
    await sign_out(page, hub)
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        assert 'autocomplete="username webauthn"' in (await http.get("/sign-in")).text
    await page.goto(hub.url + "/sign-in?next=/account")
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    assert await session_amr(hub) == "hwk user"

    # ... and on its own button, without an email address typed.
    await sign_out(page, hub)
    await context.add_init_script(NO_AUTOFILL)
    await page.goto(hub.url + "/sign-in?next=/account")
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    assert await session_amr(hub) == "hwk user"
    await expect(page.locator("ul.passkeys li")).to_contain_text("last used")
    await expect(page.locator("ul.sessions li").first).to_contain_text("with a passkey")

    # For a service that asks for two steps: the passkey alone satisfies it, and the ID token
    # says how (never pwd).
    await sign_out(page, hub)

    async def with_passkey(p: Page) -> None:
        await p.get_by_role("button", name="Sign in with a passkey").click()

    claims = await through_service(page, rp, with_passkey, acr_values=assurance.MFA)
    assert claims["amr"] == ["hwk", "user"] and claims["acr"] == assurance.MFA

    # After a password, the passkey is the second step (the account has no authenticator app).
    await sign_out(page, hub)

    async def password_then_passkey(p: Page) -> None:
        await p.get_by_label("Email address").fill("ann@example.com")
        await p.get_by_label("Password").fill(PASSWORD)
        await p.get_by_role("button", name="Sign in", exact=True).click()
        await expect(p.get_by_role("heading", name="Use your passkey")).to_be_visible()
        await p.get_by_role("button", name="Use a passkey").click()

    claims = await through_service(page, rp, password_then_passkey, consent=False, prompt="login")
    assert claims["amr"] == ["pwd", "hwk", "user", "mfa"] and claims["acr"] == assurance.MFA

    # Removed (a fresh sign-in stands for the password): mailed, audited, and it signs in no more.
    await page.goto(hub.url + "/account")
    await page.get_by_role("link", name="Remove passkey").click()
    await expect(page.get_by_role("heading", name='Remove the passkey "Work laptop"?')).to_be_visible()
    await expect(page.get_by_label("Current password")).to_have_count(0)
    await page.get_by_role("button", name="Remove passkey").click()
    await expect(page.get_by_text("The passkey is removed")).to_be_visible()
    await expect(page.get_by_text("You have no passkeys yet.")).to_be_visible()
    await eventually(lambda: _is(mails(hub, "A passkey was removed"), 1), what="the mail about the removed passkey")
    async with hub.app[DB].begin() as db:
        actions = (await db.scalars(select(AuditRecord.action).where(AuditRecord.action.like("account.passkey%")).order_by(AuditRecord.id))).all()
        assert actions == ["account.passkey_added", "account.passkey_removed"]
    await sign_out(page, hub)
    await page.goto(hub.url + "/sign-in?next=/account")
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page.get_by_text("This passkey is not known here")).to_be_visible()

    # The page told the browser (signalUnknownCredential), whose authenticator dropped it.
    async def dropped() -> bool:
        return (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))["credentials"] == []

    await eventually(dropped, timeout=10, what="the unknown passkey dropped by the authenticator")
    await context.close()


async def _is(count: Any, wanted: int) -> bool:
    return await count == wanted


@EMBEDDED_DEFAULT
async def test_a_service_asking_for_two_steps_steps_a_password_session_up_with_a_passkey(localhost_hub: Hub, chromium: Chromium) -> None:
    """A session signed in with the password before the passkey was added: a service sends
    acr_values for mfa; the hub asks for the passkey (naming the service), in the same session."""
    hub = localhost_hub
    await hub.add_user(verified=True)
    service = await hub.add_service(name="Garden Centre")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    context = await chromium.new_context(viewport={"width": 390, "height": 844})
    await context.add_init_script(NO_AUTOFILL)
    page = await context.new_page()
    await with_authenticator(context, page)
    await password_sign_in(page, hub)
    await add_passkey(page, hub)
    assert await session_amr(hub) == "pwd"

    async def step_up(p: Page) -> None:
        await expect(p.get_by_role("heading", name="Use your passkey")).to_be_visible()
        await expect(p.get_by_text("Garden Centre asks for two-step sign-in.")).to_be_visible()
        await p.get_by_role("button", name="Use a passkey").click()

    claims = await through_service(page, rp, step_up, acr_values=assurance.MFA)
    assert claims["amr"] == ["pwd", "hwk", "user", "mfa"] and claims["acr"] == assurance.MFA
    assert await session_amr(hub) == "pwd hwk user"
    await context.close()


@EMBEDDED_DEFAULT
async def test_adding_a_passkey_long_after_signing_in_needs_the_password(localhost_hub: Hub, chromium: Chromium) -> None:
    hub = localhost_hub
    await hub.add_user(verified=True)
    context = await chromium.new_context()
    await context.add_init_script(NO_AUTOFILL)
    page = await context.new_page()
    await with_authenticator(context, page)
    await password_sign_in(page, hub)
    async with hub.app[DB].begin() as db:
        await db.execute(update(BrowserSession).values(auth_time=utcnow() - dt.timedelta(minutes=20)))
    await page.goto(hub.url + "/account")
    await page.get_by_label("Name for the new passkey").fill("Phone")
    await page.get_by_role("button", name="Add a passkey").click()
    # The browser's own form check asks for the password before any passkey is made.
    assert await page.get_by_label("Your password, to add a passkey").evaluate("e => e.validity.valueMissing")
    await page.get_by_label("Your password, to add a passkey").fill("not the password")
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(page.get_by_role("heading", name="Your passkey was not added")).to_be_visible()
    await expect(page.get_by_text("Your password is not correct.")).to_be_visible()
    await page.get_by_role("link", name="Back to your account").click()
    await page.get_by_label("Name for the new passkey").fill("Phone")
    await page.get_by_label("Your password, to add a passkey").fill(PASSWORD)
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(page.get_by_text("Your passkey is added")).to_be_visible()
    await expect(page.locator("ul.passkeys li")).to_contain_text("Phone")
    await context.close()


# On both databases: a sign-in takes the passkey's row with SELECT ... FOR UPDATE, so that of
# two answers raced, one finds the counter the other moved.
async def test_a_replayed_answer_and_a_counter_that_went_back_are_refused(localhost_hub: Hub, chromium: Chromium) -> None:
    hub = localhost_hub
    await hub.add_user(verified=True)
    context = await chromium.new_context()
    await context.add_init_script(NO_AUTOFILL)
    page = await context.new_page()
    await with_authenticator(context, page)
    await password_sign_in(page, hub)
    await add_passkey(page, hub)
    await sign_out(page, hub)

    # The browser's answer, and the cookies it went with, are kept and sent again once used.
    await page.goto(hub.url + "/sign-in?next=/account")
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    async with page.expect_request(lambda r: r.url.endswith("/sign-in/passkey")) as posted:
        await page.get_by_role("button", name="Sign in with a passkey").click()
    body = (await posted.value).post_data
    assert body is not None
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    async with httpx2.AsyncClient(base_url=hub.url, cookies={k: cookies[k] for k in ("osi_csrf", "osi_passkey")}, timeout=30) as http:
        replayed = await http.post(
            "/sign-in/passkey", content=body, headers={"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"}
        )
    assert replayed.status_code == 400 and "That took too long" in replayed.text
    assert "osi_session" not in replayed.cookies

    # A signature counter below the one last seen: maybe a copied authenticator. Refused, audited.
    await sign_out(page, hub)
    async with hub.app[DB].begin() as db:
        await db.execute(update(Passkey).values(sign_count=1000))
    await page.goto(hub.url + "/sign-in?next=/account")
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page.get_by_text("signature counter went backwards")).to_be_visible()
    async with hub.app[DB].begin() as db:
        assert await db.scalar(select(AuditRecord.action).where(AuditRecord.action == "account.passkey_counter_regressed")) is not None
        assert await db.scalar(select(Passkey.sign_count)) == 1000
    await context.close()


@EMBEDDED_DEFAULT
@pytest.mark.parametrize("width", [390, 1280])
async def test_the_passkey_pages_fit_the_screen(localhost_hub: Hub, chromium: Chromium, tmp_path: Path, width: int, database_url: str) -> None:
    hub = localhost_hub
    await hub.add_user(verified=True)
    context = await chromium.new_context(viewport={"width": width, "height": 844})
    await context.add_init_script(NO_AUTOFILL)
    page = await context.new_page()
    cdp, authenticator = await with_authenticator(context, page)
    label = "sqlite" if database_url.startswith("sqlite") else "postgres"

    await page.goto(hub.url + "/sign-in")
    await expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_visible()
    await expect(page.get_by_text("Your browser cannot use passkeys here")).to_be_hidden()
    measured = await page.evaluate(OVERFLOW)
    assert measured["scroll"] <= measured["width"] and measured["wide"] == [], measured
    for place in _shots(tmp_path):
        await page.screenshot(path=str(place / f"sign-in-{width}-{label}.png"), full_page=True)

    await password_sign_in(page, hub)
    await add_passkey(page, hub, "Phone with a rather long name for a passkey")
    # A second device (the first holds a passkey for the account already, and is excluded).
    await cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": authenticator})
    await with_authenticator(context, page)
    await add_passkey(page, hub, "Security key")
    section = page.locator("#passkeys")
    await expect(section.locator("ul.passkeys li")).to_have_count(2)
    removes = section.get_by_role("link", name="Remove passkey")
    for i in range(2):
        box = await removes.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (width, box)
    measured = await page.evaluate(OVERFLOW)
    assert measured["scroll"] <= measured["width"] and measured["wide"] == [], measured
    for place in _shots(tmp_path):
        await section.screenshot(path=str(place / f"account-passkeys-{width}-{label}.png"))
    await context.close()


@EMBEDDED_DEFAULT
async def test_without_javascript_the_pages_say_what_to_do(localhost_hub: Hub, chromium: Chromium) -> None:
    hub = localhost_hub
    await hub.add_user(verified=True)
    context = await chromium.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(hub.url + "/sign-in?next=/account")
    await expect(page.get_by_text("Your browser cannot use passkeys here")).to_be_visible()
    await expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_hidden()
    await page.get_by_label("Email address").fill("ann@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    await expect(page.get_by_text("To add a passkey, use a browser that supports passkeys")).to_be_visible()
    await expect(page.get_by_role("button", name="Add a passkey")).to_be_hidden()
    await context.close()
