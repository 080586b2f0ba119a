"""The account page in a real headless Chromium at a phone's width (390 px) and a desktop's
(1280 px): nothing is cut off or needs sideways scrolling, the linked services' Unlink buttons
included; the not-confirmed banner's button sends a new link without JavaScript. Screenshots are
written to the test's directory (and to ``$ONESIGNIN_SCREENSHOTS`` when set) for a person to look at."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyotp
import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import expect

from identity.mail import read_outbox
from tests.conftest import CHROMIUM
from tests.identity.pages.test_register import register
from tests.support import EMBEDDED_DEFAULT, PASSWORD, Browser, Hub, RelyingParty, authorize_through, eventually


pytestmark = [
    pytest.mark.e2e,
    EMBEDDED_DEFAULT,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
    ),
]

#: Every element of the page's main part and footer, and how far right it reaches.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('main *, footer *')]
    .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.tagName + (e.id ? '#' + e.id : '') + ':' + (e.textContent || '').trim().slice(0, 30));
  return {scroll: document.documentElement.scrollWidth, width, wide};
}"""



def _shots(tmp_path: Path) -> list[Path]:
    places = [tmp_path]
    if extra := os.environ.get("ONESIGNIN_SCREENSHOTS"):
        places.append(Path(extra))
        Path(extra).mkdir(parents=True, exist_ok=True)
    return places


@pytest.mark.parametrize("width", [390, 1280])
async def test_the_account_page_fits_the_screen_with_nothing_cut_off(
    hub: Hub, browser: Browser, chromium: Chromium, tmp_path: Path, width: int, database_url: str
) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    for name in ("Garden Centre and Outdoor Living Superstore", "Forum"):
        service = await hub.add_service(name=name)
        await authorize_through(RelyingParty(hub, service.client_id, service.client_secret), browser, scope="openid profile email phone address marketing offline_access")

    context = await chromium.new_context(viewport={"width": width, "height": 844})
    page = await context.new_page()
    await page.goto(hub.url + "/sign-in?next=/account")
    await page.get_by_label("Email address").fill("ann@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()

    unlinks = page.get_by_role("link", name="Unlink")
    await expect(unlinks).to_have_count(2)
    for i in range(2):
        box = await unlinks.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (width, box)
    measured = await page.evaluate(OVERFLOW)
    assert measured["scroll"] <= measured["width"] and measured["wide"] == [], measured
    # The services' shares are in plain words.
    await expect(page.get_by_text("Your postal address").first).to_be_visible()

    label = "sqlite" if database_url.startswith("sqlite") else "postgres"
    for place in _shots(tmp_path):
        await page.screenshot(path=str(place / f"account-{width}-{label}.png"), full_page=True)
    await page.goto(hub.url + "/privacy")
    measured = await page.evaluate(OVERFLOW)
    assert measured["scroll"] <= measured["width"] and measured["wide"] == [], measured
    for place in _shots(tmp_path):
        await page.screenshot(path=str(place / f"privacy-{width}-{label}.png"))
    await context.close()


async def test_the_not_confirmed_banner_sends_a_new_link(hub: Hub, browser: Browser, chromium: Chromium) -> None:
    await register(browser)
    page = await chromium.new_page(java_script_enabled=False)
    await page.goto(hub.url + "/sign-in?next=/account")
    await page.get_by_label("Email address").fill("new@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Your email address is not confirmed yet")).to_be_visible()
    await page.get_by_role("button", name="Send me a new confirmation link").click()
    await expect(page.get_by_text("We sent a new confirmation link to new@example.com.")).to_be_visible()

    async def two() -> bool:
        mails = read_outbox(hub.settings.data_dir / "mail")
        return len([m for m in mails if m["Subject"] == "Confirm your email address"]) == 2

    await eventually(two, what="a second confirmation mail")
    await page.close()


async def test_setting_up_two_step_sign_in_and_signing_in_with_it(hub: Hub, chromium: Chromium, tmp_path: Path) -> None:
    await hub.add_user(verified=True)
    context = await chromium.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    await page.goto(hub.url + "/sign-in?next=/account")
    await page.get_by_label("Email address").fill("ann@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name="Set up two-step sign-in").click()
    await expect(page.get_by_role("heading", name="Two-step sign-in")).to_be_visible()
    qr = page.locator("figure.qr svg")
    await expect(qr).to_be_visible()
    box = await qr.bounding_box()
    assert box is not None and box["width"] >= 120 and box["x"] + box["width"] <= 390
    measured = await page.evaluate(OVERFLOW)
    assert measured["scroll"] <= measured["width"] and measured["wide"] == [], measured
    for place in _shots(tmp_path):
        await page.screenshot(path=str(place / "two-step-390.png"), full_page=True)

    totp = pyotp.TOTP((await page.locator("#totp-secret").inner_text()).replace(" ", ""))
    await expect(page.get_by_label("Code from your app")).to_have_attribute("autocomplete", "one-time-code")
    await page.get_by_label("Code from your app").fill(totp.now())
    await page.get_by_role("button", name="Turn on two-step sign-in").click()
    await expect(page.get_by_role("heading", name="Two-step sign-in is on")).to_be_visible()
    await expect(page.locator("#recovery-codes li")).to_have_count(10)
    await page.get_by_role("link", name="I have saved them").click()
    await page.get_by_role("button", name="Sign out", exact=True).click()

    await page.goto(hub.url + "/sign-in?next=/account")
    await page.get_by_label("Email address").fill("ann@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    later = totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    await page.get_by_label("Code").fill(later)
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    await expect(page.locator("#two-step")).to_contain_text("Two-step sign-in is on")
    await context.close()


async def test_a_service_asking_for_two_steps_steps_the_session_up(hub: Hub, chromium: Chromium) -> None:
    """Step-up in the browser: a session signed in with the password before two-step sign-in was
    set up; a service sends acr_values for mfa; the code page names the service; then consent."""
    await hub.add_user(verified=True)
    service = await hub.add_service(name="Garden Centre")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    url, _ = await rp.start(acr_values="urn:onesignin:acr:mfa")

    context = await chromium.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    await page.goto(hub.url + "/sign-in?next=/account/two-step")
    await page.get_by_label("Email address").fill("ann@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    totp = pyotp.TOTP((await page.locator("#totp-secret").inner_text()).replace(" ", ""))
    await page.get_by_label("Code from your app").fill(totp.now())
    await page.get_by_role("button", name="Turn on two-step sign-in").click()
    await expect(page.get_by_role("heading", name="Two-step sign-in is on")).to_be_visible()

    await page.goto(url)
    await expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    await expect(page.get_by_text("Garden Centre asks for two-step sign-in.")).to_be_visible()
    await page.get_by_label("Code").fill(totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)))
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Allow Garden Centre to use your account?")).to_be_visible()
    await context.close()
