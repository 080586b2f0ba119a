"""The hub's own sign-in and sign-out pages: CSRF, no account enumeration, throttling and the
session cookie."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx2
import pytest
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Account, BrowserSession
from tests.support import PASSWORD, Browser, Hub, RelyingParty, form

WRONG = "The email address or password is incorrect."
FORBIDDEN = "This form has expired or was not sent from this site."


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"throttle_account_failures": 3, "throttle_address_failures": 10, "throttle_base_lockout": 60}


@pytest.fixture
async def ann(hub: Hub) -> str:
    return await hub.add_user(verified=True)


def set_cookie_headers(response: httpx2.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]


async def csrf_token(browser: Browser) -> str:
    page = await browser.go("/sign-in")
    return form(page.text, "/sign-in").fields["csrf_token"]


async def start_interaction(hub: Hub, browser: Browser) -> str:
    service = await hub.add_service()
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    url, _ = await rp.start()
    response = await browser.http.get(url)
    assert response.status_code == 302
    return response.headers["location"]


def assert_forbidden(response: httpx2.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text[:1000])
    assert "Not allowed" in response.text
    assert FORBIDDEN in response.text
    assert "osi_session" not in "".join(response.headers.get_list("set-cookie"))


# CSRF -------------------------------------------------------------------------------------------


async def _posts(hub: Hub, browser: Browser) -> list[tuple[str, dict[str, str]]]:
    interaction = await start_interaction(hub, browser)
    assert (await browser.go(interaction)).status_code == 200
    return [
        ("/sign-in", {"email": "ann@example.com", "password": PASSWORD}),
        (
            "/register",
            {
                "email": "new@example.com",
                "password": PASSWORD,
                "given_name": "New",
                "family_name": "Person",
                "birthdate": "1990-01-01",
            },
        ),
        (interaction + "/login", {"email": "ann@example.com", "password": PASSWORD}),
        (interaction + "/consent", {"decision": "allow"}),
        ("/account/details", {"email": "ann@example.com", "given_name": "Mallory"}),
    ]


async def test_post_without_csrf_token_is_refused(hub: Hub, ann: str, browser: Browser) -> None:
    await browser.sign_in()
    await csrf_token(browser)  # the browser has a CSRF cookie, but the form lacks the token
    for path, data in await _posts(hub, browser):
        response = await browser.http.post(path, data=data)
        assert_forbidden(response)
    await _assert_nothing_changed(hub)


async def test_post_with_wrong_csrf_token_is_refused(hub: Hub, ann: str, browser: Browser) -> None:
    await browser.sign_in()
    good = await csrf_token(browser)
    for path, data in await _posts(hub, browser):
        for bad in ("x", good[:-1] + ("0" if good[-1] != "0" else "1"), ""):
            response = await browser.http.post(path, data=data | {"csrf_token": bad})
            assert_forbidden(response)
    await _assert_nothing_changed(hub)


async def test_token_from_another_browser_is_refused(hub: Hub, ann: str, browser: Browser) -> None:
    await browser.sign_in()
    other = Browser(hub)
    try:
        stolen = await csrf_token(other)
    finally:
        await other.aclose()
    await csrf_token(browser)
    for path, data in await _posts(hub, browser):
        response = await browser.http.post(path, data=data | {"csrf_token": stolen})
        assert_forbidden(response)
    await _assert_nothing_changed(hub)


async def test_token_without_its_cookie_is_refused(hub: Hub, ann: str) -> None:
    browser = Browser(hub)
    token = await csrf_token(browser)
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as bare:
        response = await bare.post("/sign-in", data={"csrf_token": token, "email": "ann@example.com", "password": PASSWORD})
    await browser.aclose()
    assert_forbidden(response)


async def _assert_nothing_changed(hub: Hub) -> None:
    async with hub.app[DB]() as db:
        accounts = (await db.scalars(select(Account))).all()
    assert [(a.email, a.given_name, a.version) for a in accounts] == [("ann@example.com", "Ann", 1)]


# No enumeration --------------------------------------------------------------------------------


async def test_wrong_password_and_unknown_email_look_the_same(hub: Hub, ann: str, browser: Browser) -> None:
    wrong_password = await browser.sign_in("ann@example.com", "not the right password at all")
    unknown_email = await browser.sign_in("nobody@example.com", PASSWORD)
    assert wrong_password.status_code == unknown_email.status_code == 400
    assert WRONG in wrong_password.text
    assert wrong_password.text.replace("ann@example.com", "EMAIL") == unknown_email.text.replace(
        "nobody@example.com", "EMAIL"
    )
    assert "osi_session" not in browser.http.cookies


async def test_malformed_email_looks_the_same_too(hub: Hub, ann: str, browser: Browser) -> None:
    unknown = await browser.sign_in("nobody@example.com", PASSWORD)
    malformed = await browser.sign_in("not-an-address", PASSWORD)
    assert malformed.status_code == unknown.status_code == 400
    assert malformed.text.replace("not-an-address", "EMAIL") == unknown.text.replace("nobody@example.com", "EMAIL")


async def test_correct_password_signs_in(hub: Hub, ann: str, browser: Browser) -> None:
    page = await browser.go("/sign-in")
    response = await browser.http.post(
        "/sign-in", data=form(page.text, "/sign-in").fields | {"email": "Ann@Example.com", "password": PASSWORD}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    account = await browser.go("/account")
    assert account.status_code == 200
    assert "Your account" in account.text


async def test_next_is_kept_only_when_it_stays_on_the_hub(hub: Hub, ann: str, browser: Browser) -> None:
    for target, expected in (("/account/password", "/account/password"), ("https://evil.example/", "/account"), ("//evil.example/x", "/account")):
        page = await browser.go("/sign-in?next=" + quote(target, safe=""))
        response = await browser.http.post(
            "/sign-in", data=form(page.text, "/sign-in").fields | {"email": "ann@example.com", "password": PASSWORD}
        )
        assert response.status_code == 303
        assert response.headers["location"] == expected, target


# Throttling --------------------------------------------------------------------------------------


def wait_seconds(text: str) -> int:
    match = re.search(r"[Tt]ry again in (\d+) seconds", text)
    assert match, text[:2000]
    return int(match.group(1))


async def test_lockout_after_too_many_failures(hub: Hub, ann: str, browser: Browser) -> None:
    for _ in range(2):
        response = await browser.sign_in("ann@example.com", "wrong password number one")
        assert response.status_code == 400
        assert "Try again" not in response.text and "try again" not in response.text
    third = await browser.sign_in("ann@example.com", "wrong password number one")
    assert third.status_code == 429
    assert WRONG in third.text
    assert 0 < wait_seconds(third.text) <= 60

    # Locked: even the correct password is refused, and no session is started.
    locked = await browser.sign_in("ann@example.com", PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed attempts. Try again in" in locked.text
    assert 0 < wait_seconds(locked.text) <= 60
    assert "osi_session" not in browser.http.cookies
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(BrowserSession))).all() == []


async def test_lockout_is_by_typed_email_so_unknown_addresses_lock_too(hub: Hub, ann: str, browser: Browser) -> None:
    known = [await browser.sign_in("ann@example.com", "wrong password number one") for _ in range(3)]
    unknown = [await browser.sign_in("nobody@example.com", "wrong password number one") for _ in range(3)]
    assert [r.status_code for r in known] == [r.status_code for r in unknown] == [400, 400, 429]


async def test_lockout_also_applies_inside_an_authorization(hub: Hub, ann: str, browser: Browser) -> None:
    for _ in range(3):
        await browser.sign_in("ann@example.com", "wrong password number one")
    interaction = await start_interaction(hub, browser)
    page = await browser.go(interaction)
    response = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    assert response.status_code == 429
    assert "Too many failed attempts. Try again in" in response.text


async def test_other_email_from_same_address_is_still_allowed(hub: Hub, ann: str, browser: Browser) -> None:
    await hub.add_user("bob@example.com", given_name="Bob")
    for _ in range(3):
        await browser.sign_in("ann@example.com", "wrong password number one")
    assert (await browser.sign_in("ann@example.com", PASSWORD)).status_code == 429

    # 3 failures so far from this address, below its limit of 10.
    wrong = await browser.sign_in("bob@example.com", "wrong password number one")
    assert wrong.status_code == 400
    assert "try again" not in wrong.text.lower()
    page = await browser.go("/sign-in")
    ok = await browser.http.post(
        "/sign-in", data=form(page.text, "/sign-in").fields | {"email": "bob@example.com", "password": PASSWORD}
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == "/account"


async def test_address_limit_locks_every_email(hub: Hub, ann: str, browser: Browser) -> None:
    for i in range(10):
        await browser.sign_in(f"person{i}@example.com", "wrong password number one")
    response = await browser.sign_in("ann@example.com", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed attempts. Try again in" in response.text


async def test_success_resets_the_account_counter(hub: Hub, ann: str, browser: Browser) -> None:
    for _ in range(2):
        assert (await browser.sign_in("ann@example.com", "wrong password number one")).status_code == 400
    page = await browser.go("/sign-in")
    ok = await browser.http.post(
        "/sign-in", data=form(page.text, "/sign-in").fields | {"email": "ann@example.com", "password": PASSWORD}
    )
    assert ok.status_code == 303
    for _ in range(2):
        assert (await browser.sign_in("ann@example.com", "wrong password number one")).status_code == 400


# The session cookie ------------------------------------------------------------------------------


async def _post_sign_in(browser: Browser) -> httpx2.Response:
    page = await browser.go("/sign-in")
    return await browser.http.post(
        "/sign-in", data=form(page.text, "/sign-in").fields | {"email": "ann@example.com", "password": PASSWORD}
    )


async def test_session_cookie_is_http_only_and_same_site_lax(hub: Hub, ann: str, browser: Browser) -> None:
    response = await _post_sign_in(browser)
    assert response.status_code == 303
    (header,) = set_cookie_headers(response, "osi_session")
    attributes = [a.strip().lower() for a in header.split(";")[1:]]
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    # A loopback http issuer cannot set Secure cookies; https issuers do (Settings.secure_cookies).
    assert "secure" not in attributes


async def test_csrf_cookie_is_http_only_and_same_site_lax(hub: Hub, browser: Browser) -> None:
    response = await browser.http.get("/sign-in")
    (header,) = set_cookie_headers(response, "osi_csrf")
    attributes = [a.strip().lower() for a in header.split(";")[1:]]
    assert "httponly" in attributes
    assert "samesite=lax" in attributes


async def test_signing_in_again_issues_a_new_session_cookie(hub: Hub, ann: str, browser: Browser) -> None:
    browser.http.cookies.set("osi_session", "planted-by-someone-else", domain="127.0.0.1", path="/")
    first = await _post_sign_in(browser)
    (first_header,) = set_cookie_headers(first, "osi_session")
    first_value = first_header.split(";")[0].split("=", 1)[1]
    assert first_value != "planted-by-someone-else"

    second = await _post_sign_in(browser)
    (second_header,) = set_cookie_headers(second, "osi_session")
    second_value = second_header.split(";")[0].split("=", 1)[1]
    assert second_value != first_value
    async with hub.app[DB]() as db:
        sessions = (await db.scalars(select(BrowserSession))).all()
    assert len(sessions) == 2
    assert len({s.sid for s in sessions}) == 2


async def test_sign_out_ends_the_session(hub: Hub, ann: str, browser: Browser) -> None:
    await browser.sign_in()
    secret = browser.http.cookies.get("osi_session")
    account = await browser.go("/account")
    assert account.status_code == 200

    response = await browser.submit(account, "/sign-out")
    assert response.status_code == 200
    assert "You are signed out" in response.text
    assert any("osi_session=" in h for h in response.headers.get_list("set-cookie"))

    after = await browser.http.get("/account")
    assert after.status_code == 302
    assert after.headers["location"] == "/sign-in?next=/account"

    # The old cookie value is dead on the server too, not just forgotten by the browser.
    async with httpx2.AsyncClient(base_url=hub.url, cookies={"osi_session": secret}, timeout=30) as replay:
        replayed = await replay.get("/account")
    assert replayed.status_code == 302
    assert replayed.headers["location"] == "/sign-in?next=/account"
    async with hub.app[DB]() as db:
        (session,) = (await db.scalars(select(BrowserSession))).all()
    assert session.ended_at is not None


async def test_sign_out_needs_csrf(hub: Hub, ann: str, browser: Browser) -> None:
    await browser.sign_in()
    response = await browser.http.post("/sign-out", data={})
    assert_forbidden(response)
    assert (await browser.http.get("/account")).status_code == 200


async def test_parallel_guesses_cannot_outrun_the_limit(hub: Hub) -> None:
    """Twenty wrong guesses sent at once: no more passwords are checked than the limit allows,
    whichever requests win the race, and then even the right password waits for the lock."""
    import asyncio

    await hub.add_user("target@example.com")
    browsers = [Browser(hub) for _ in range(21)]
    try:
        pages = [await b.go("/sign-in") for b in browsers]

        def post(b: Browser, page: httpx2.Response, password: str):  # type: ignore[no-untyped-def]
            fields = form(page.text, "/sign-in").fields | {"email": "target@example.com", "password": password}
            return b.http.post("/sign-in", data=fields)  # not following the redirect of a success

        responses = await asyncio.gather(
            *(post(b, page, f"wrong guess number {i}") for i, (b, page) in enumerate(zip(browsers[:-1], pages[:-1])))
        )
        right = await post(browsers[-1], pages[-1], PASSWORD)
    finally:
        for b in browsers:
            await b.aclose()
    checked = [r for r in responses if "The email address or password is incorrect." in r.text]
    assert all(r.status_code in (400, 429) for r in responses)
    assert len(checked) <= hub.settings.throttle_account_failures
    assert right.status_code == 429
    assert "Too many failed attempts. Try again in" in right.text
