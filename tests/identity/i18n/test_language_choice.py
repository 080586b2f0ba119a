"""Which language a page and a mail speak: the authorization request's ui_locales, then the
language picked with the switcher (a cookie), then the person's locale claim, then the
browser's Accept-Language, then the operator's ONESIGNIN_DEFAULT_LOCALE. Mail goes in the
recipient's locale claim, else the language of the page that caused it.

The rules are tested as pure functions; a few real HTTP exchanges with one hub (SQLite: the
database plays no part in the choice) show each reaching the person."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import update

from identity.appkeys import DB
from identity.db.models import Account
from identity.mail import read_outbox
from tests.identity.pages.test_two_step import enrol
from tests.support import PASSWORD, Browser, Hub, RelyingParty, eventually, form

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"default_locale": "sv"}


def lang_of(page) -> str:
    found = re.search(r'<html lang="([a-z]+)" dir="(ltr|rtl)">', page.text)
    assert found, page.text[:300]
    return found.group(1)


async def _claim(hub: Hub, email: str, locale: str) -> None:
    async with hub.app[DB].begin() as db:
        await db.execute(update(Account).where(Account.email == email).values(locale=locale))


async def test_browser_switcher_and_locale_claim_choose_the_page_language(hub: Hub) -> None:
    await hub.add_user(verified=True)
    await _claim(hub, "ann@example.com", "pl-PL")
    b = Browser(hub)
    try:
        # Nothing said: the operator's default.
        assert lang_of(await b.go("/sign-in")) == "sv"
        # The browser's languages.
        b.http.headers["Accept-Language"] = "de-DE,de;q=0.9,en;q=0.5"
        page = await b.go("/sign-in")
        assert lang_of(page) == "de" and '<span aria-current="true" lang="de">Deutsch</span>' in page.text
        # Signed in, the person's locale claim beats the browser.
        await b.sign_in()
        assert lang_of(await b.go("/account")) == "pl"
        # The switcher (a plain link) beats the claim, and is kept in a cookie.
        account = await b.go("/account")
        assert 'href="/language/ar?next=/account"' in account.text
        switched = await b.http.get("/language/ar?next=%2Faccount")
        assert switched.status_code == 303 and switched.headers["location"] == "/account"
        assert "osi_lang=ar" in switched.headers["set-cookie"] and "HttpOnly" in switched.headers["set-cookie"]
        page = await b.go("/account")
        assert re.search(r'<html lang="ar" dir="rtl">', page.text)
        # Error pages speak it too; a language the hub does not speak changes nothing; the
        # switcher only goes back within the hub.
        assert lang_of(await b.go("/no-such-page")) == "ar"
        # The privacy policy's text is the operator's, shown as written, and says its language.
        policy = await b.go("/privacy")
        assert lang_of(policy) == "ar" and '<div class="policy-text" lang="en">' in policy.text
        ignored = await b.http.get("/language/xx?next=//evil.example/")
        assert ignored.headers["location"] == "/account" and "set-cookie" not in ignored.headers
    finally:
        await b.aclose()


async def test_ui_locales_choose_the_sign_in_and_consent_pages_of_their_request(hub: Hub, rp: RelyingParty) -> None:
    assert rp.metadata["ui_locales_supported"] == ["en", "de", "fr", "es", "it", "nl", "pl", "pt", "sv", "ar"]
    assert set(rp.metadata["claims_locales_supported"]) == set(rp.metadata["ui_locales_supported"])
    b = Browser(hub)
    try:
        b.http.cookies.set("osi_lang", "fr")  # picked earlier with the switcher
        url, _kept = await rp.start(ui_locales="ja it-IT de")
        sign_in = await b.go(url)
        assert re.match(r".*/i/[^/]+$", str(sign_in.url)) and lang_of(sign_in) == "it"
        consent = await b.submit(sign_in, "/i/", email="ann@example.com", password=PASSWORD)
        assert "/consent" in consent.text and lang_of(consent) == "it"
        f = form(consent.text, "/i/")
        done = await b.go(f.action, method="POST", data=f.fields | {"decision": "allow"})
        assert done.status_code == 302
        # Pages outside that request: the picked language again.
        assert lang_of(await b.go("/account")) == "fr"
    finally:
        await b.aclose()
    # With two-step sign-in, the code step on the way back to the request speaks it too, a
    # wrong code's answer included.
    own = Browser(hub)
    await own.sign_in()
    totp, _codes = await enrol(own)
    await own.aclose()
    b = Browser(hub)
    try:
        url, _kept = await rp.start(ui_locales="it")
        sign_in = await b.go(url)
        code = await b.submit(sign_in, "/i/", email="ann@example.com", password=PASSWORD)
        assert "/sign-in/code" in str(code.url) and lang_of(code) == "it"
        wrong = await b.submit(code, "/sign-in/code", code="000000" if totp.now() != "000000" else "111111")
        assert wrong.status_code == 400 and lang_of(wrong) == "it"
    finally:
        await b.aclose()


async def test_mail_goes_in_the_recipient_s_language_else_the_page_s(hub: Hub) -> None:
    await hub.add_user(email="de@example.com", verified=True)
    await _claim(hub, "de@example.com", "de")
    await hub.add_user(email="none@example.com", verified=True)
    b = Browser(hub)
    try:
        b.http.headers["Accept-Language"] = "fr"
        page = await b.go("/reset-password")
        assert lang_of(page) == "fr"
        for email in ("de@example.com", "none@example.com"):
            await b.submit(page, "/reset-password", email=email)

        def resets() -> dict[str, str]:
            return {m["To"]: m["Content-Language"] for m in read_outbox(hub.settings.data_dir / "mail") if "/reset-password/confirm" in m.get_content()}

        mailed = await eventually(lambda: _ready(resets, 2), what="both reset mails")
        assert mailed == {"de@example.com": "de", "none@example.com": "fr"}
    finally:
        await b.aclose()


async def _ready(probe, count: int):
    found = probe()
    return found if len(found) >= count else None
