"""CSRF tokens bound to the session, renewed at sign-in and sign-out; requests the browser says
came from elsewhere refused; cookie names the browser protects under an https issuer."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from identity import admin
from identity.appkeys import DB, HASHER
from identity.db.models import Account
from identity.settings import Settings
from identity.web.app import create_app
from tests.conftest import TEST_SETTINGS
from tests.support import SQLITE_ALONE, PASSWORD, Browser, Hub, form

pytestmark = SQLITE_ALONE

FORBIDDEN = "This form has expired or was not sent from this site."


@pytest.fixture
async def ann(hub: Hub) -> str:
    return await hub.add_user(verified=True)


async def given_name(hub: Hub) -> str | None:
    async with hub.app[DB]() as db:
        return await db.scalar(select(Account.given_name).where(Account.email == "ann@example.com"))


async def details_form(browser: Browser) -> dict[str, str]:
    page = await browser.go("/account")
    assert page.status_code == 200 and page.url.path == "/account"
    return form(page.text, "/account/details").fields


async def test_a_planted_csrf_cookie_with_its_own_token_opens_nothing_in_a_signed_in_session(
    hub: Hub, ann: str, browser: Browser
) -> None:
    # The attacker gets a valid (cookie, token) pair by opening any page, then plants the cookie
    # in Ann's signed-in browser (a sibling subdomain can, and so can anyone on plain http).
    attacker = Browser(hub)
    try:
        page = await attacker.go("/sign-in")
        nonce = attacker.http.cookies.get("osi_csrf")
        token = form(page.text, "/sign-in").fields["csrf_token"]
    finally:
        await attacker.aclose()
    await browser.sign_in()
    fields = await details_form(browser)
    browser.http.cookies.set("osi_csrf", nonce, domain="127.0.0.1", path="/")
    forged = await browser.http.post("/account/details", data=fields | {"given_name": "Mallory", "csrf_token": token})
    assert forged.status_code == 403 and FORBIDDEN in forged.text
    assert await given_name(hub) == "Ann"


async def test_forms_rendered_before_signing_in_again_stop_working(hub: Hub, ann: str, browser: Browser) -> None:
    await browser.sign_in()
    before = await details_form(browser)
    signed_in_again = await browser.sign_in()
    assert signed_in_again.url.path == "/account"
    stale = await browser.http.post("/account/details", data=before | {"given_name": "Stale"})
    assert stale.status_code == 403
    fresh = await browser.http.post("/account/details", data=(await details_form(browser)) | {"given_name": "Fresh"})
    assert fresh.status_code == 303
    assert await given_name(hub) == "Fresh"


async def test_a_form_from_before_sign_in_does_not_work_after_it(hub: Hub, ann: str, browser: Browser) -> None:
    page = await browser.go("/sign-in")
    anonymous = form(page.text, "/sign-in").fields
    await browser.sign_in()
    replay = await browser.http.post("/sign-out", data={"csrf_token": anonymous["csrf_token"]})
    assert replay.status_code == 403


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),  # a sibling subdomain of the group
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "null"}, False),
        ({}, True),  # a client that says nothing is left to the token
    ],
)
async def test_where_the_browser_says_a_form_came_from(
    hub: Hub, ann: str, browser: Browser, headers: dict[str, str], accepted: bool
) -> None:
    await browser.sign_in()
    fields = await details_form(browser)
    answer = await browser.http.post("/account/details", data=fields | {"given_name": "Changed"}, headers=headers)
    assert answer.status_code == (303 if accepted else 403), answer.text[:500]
    assert await given_name(hub) == ("Changed" if accepted else "Ann")


async def test_the_issuers_own_origin_is_accepted(hub: Hub, ann: str, browser: Browser) -> None:
    await browser.sign_in()
    fields = await details_form(browser)
    answer = await browser.http.post("/account/details", data=fields | {"given_name": "Origin"}, headers={"Origin": hub.url})
    assert answer.status_code == 303


async def test_a_cross_site_sign_in_is_refused_even_with_a_valid_pair(hub: Hub, ann: str, browser: Browser) -> None:
    # Login CSRF: a page elsewhere posts the attacker's credentials into the victim's browser.
    page = await browser.go("/sign-in")
    fields = form(page.text, "/sign-in").fields
    answer = await browser.http.post(
        "/sign-in", data=fields | {"email": "ann@example.com", "password": PASSWORD}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert answer.status_code == 403
    assert "osi_session" not in browser.http.cookies


@pytest.fixture
async def https_hub(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A hub whose issuer is https (as behind a TLS-terminating proxy), reached over plain http."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, issuer="https://id.example.test", secret_key="s" * 40, **TEST_SETTINGS  # type: ignore[arg-type]
    )
    app = create_app(settings, migrate=False)
    server = TestServer(app, host="127.0.0.1", port=sock.getsockname()[1], socket_factory=lambda *_: sock)
    await server.start_server()
    try:
        async with app[DB].begin() as db:
            await admin.add_user(db, settings, app[HASHER], email="ann@example.com", password=PASSWORD, verified=True)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await server.close()


def cookies_set(response: httpx2.Response) -> dict[str, list[str]]:
    found = {}
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        found[name] = [a.strip().lower() for a in rest.split(";")[1:]]
    return found


async def test_under_an_https_issuer_cookies_carry_the_prefixes_browsers_enforce(https_hub: str) -> None:
    async with httpx2.AsyncClient(base_url=https_hub, timeout=30) as http:
        page = await http.get("/sign-in")
        cookies = cookies_set(page)
        # The CSRF nonce, and the passkey ceremony the page offers (its challenge, sealed).
        assert set(cookies) == {"__Host-osi_csrf", "__Host-osi_passkey"}
        for attributes in cookies.values():
            assert {"secure", "path=/", "httponly"} <= set(attributes)
            assert not any(a.startswith("domain") for a in attributes)
        nonce = next(h for h in page.headers.get_list("set-cookie") if h.startswith("__Host-osi_csrf=")).split(";")[0].split("=", 1)[1]
        fields = form(page.text, "/sign-in").fields | {"email": "ann@example.com", "password": PASSWORD}
        # The browser sends Secure cookies back over https only; the proxy forwards them here.
        signed_in = await http.post("/sign-in", data=fields, headers={"Cookie": f"__Host-osi_csrf={nonce}"})
        assert signed_in.status_code == 303, signed_in.text[:500]
        cookies = cookies_set(signed_in)
        assert set(cookies) == {"__Host-osi_session", "__Host-osi_csrf", "__Host-osi_device"}
        for attributes in cookies.values():
            assert {"secure", "path=/", "httponly"} <= set(attributes)
        # The plain name is not read under https: a cookie planted without the prefix opens nothing.
        session = signed_in.headers.get_list("set-cookie")
        secret = next(h for h in session if h.startswith("__Host-osi_session=")).split(";")[0].split("=", 1)[1]
        assert (await http.get("/account", headers={"Cookie": f"osi_session={secret}"})).status_code == 302
        assert (await http.get("/account", headers={"Cookie": f"__Host-osi_session={secret}"})).status_code == 200
        console = await http.get("/support/login")
        assert set(cookies_set(console)) == {"__Secure-osi_console_login"}
        assert {"secure", "path=/support", "httponly"} <= set(cookies_set(console)["__Secure-osi_console_login"])
