"""Malformed input gets a clear 4xx answer, never a 500 or a dropped connection."""

from __future__ import annotations

import httpx2

from tests.support import PASSWORD, Browser, Hub, RelyingParty, form, sign_in_through


async def test_basic_auth_that_is_not_utf8(hub: Hub) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        for path in ("/token", "/revoke", "/introspect"):
            response = await http.post(
                path, content=b"grant_type=client_credentials&token=x", headers={
                    "Authorization": "Basic /w==", "Content-Type": "application/x-www-form-urlencoded"}
            )
            assert response.status_code in (400, 401), (path, response.text)
            assert response.json()["error"] in ("invalid_request", "invalid_client")


async def test_form_body_that_is_not_utf8(hub: Hub, browser: Browser) -> None:
    page = await browser.go("/sign-in")
    fields = form(page.text, "/sign-in").fields
    body = f"csrf_token={fields['csrf_token']}&email=%FF%FE&password=x".encode()
    response = await browser.http.post("/sign-in", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    raw = b"csrf_token=" + fields["csrf_token"].encode() + b"&email=\xff&password=x"
    response = await browser.http.post("/sign-in", content=raw, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert "Traceback" not in response.text


async def test_nul_characters_are_refused(hub: Hub, browser: Browser) -> None:
    response = await browser.http.get("/authorize", params={"client_id": "a\x00b", "response_type": "code"})
    assert response.status_code == 400
    page = await browser.go("/sign-in")
    response = await browser.submit(page, "/sign-in", email="ann\x00@example.com", password=PASSWORD)
    assert response.status_code == 400


async def test_max_age_that_is_not_ascii_digits(rp: RelyingParty, browser: Browser) -> None:
    await sign_in_through(rp, browser)
    url, _ = await rp.start(max_age="²")
    response = await browser.go(url)
    assert response.status_code == 302
    assert "code=" in response.headers["location"]


async def test_next_with_a_line_break_goes_to_the_account_page(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    page = await browser.go("/sign-in?next=/account%0d%0aSet-Cookie:%20x=y")
    response = await browser.http.post(
        "/sign-in", data=form(page.text, "/sign-in").fields | {"email": "ann@example.com", "password": PASSWORD}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/account"


async def test_csrf_token_that_is_not_ascii(hub: Hub, browser: Browser) -> None:
    await browser.go("/sign-in")  # the CSRF cookie
    response = await browser.http.post("/sign-in", data={"csrf_token": "é", "email": "ann@example.com", "password": PASSWORD})
    assert response.status_code == 403
    assert "Traceback" not in response.text
