"""The whole code flow with authlib's own client as the relying party."""

from __future__ import annotations

import httpx2

from tests.support import Browser, Hub, RelyingParty, sign_in_through


async def test_sign_in_consent_callback_id_token_and_userinfo(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    token, kept = await sign_in_through(rp, browser)

    assert token["token_type"] == "Bearer"
    assert token["scope"] == "openid profile email offline_access"
    assert "refresh_token" in token
    claims = await rp.validate_id_token(token, kept["nonce"])
    assert claims["iss"] == hub.url
    assert claims["aud"] == rp.client_id
    assert {"sub", "exp", "iat", "auth_time", "nonce", "sid", "at_hash"} <= set(claims)

    async with rp.client(token=token) as client:
        info = (await client.get(rp.metadata["userinfo_endpoint"])).json()
    assert info == {
        "sub": claims["sub"],
        "name": "Ann Example",
        "given_name": "Ann",
        "family_name": "Example",
        "updated_at": info["updated_at"],
        "email": "ann@example.com",
        "email_verified": True,
    }


async def test_second_service_needs_no_password(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await sign_in_through(rp, browser)
    forum = await hub.add_service(name="Forum", redirect_uris=["http://127.0.0.1:9/forum/cb"])
    other = RelyingParty(hub, forum.client_id, forum.client_secret, redirect_uri="http://127.0.0.1:9/forum/cb")
    url, kept = await other.start()
    page = await browser.go(url)
    assert page.status_code == 200
    assert "Allow Forum to use your account?" in page.text
    assert 'name="password"' not in page.text


async def test_unknown_client_gets_an_error_page_not_a_redirect(hub: Hub, browser: Browser) -> None:
    page = await browser.go("/authorize?response_type=code&client_id=nope&redirect_uri=http://127.0.0.1:9/callback&scope=openid")
    assert page.status_code == 400
    assert "invalid_client" in page.text
    async with httpx2.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{hub.url}/healthz")).json() == {"status": "ok"}
