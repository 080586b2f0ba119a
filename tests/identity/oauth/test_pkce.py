"""PKCE (RFC 7636), which the hub requires with S256 from every client, confidential ones
included (RFC 9700 section 2.1.1): errors at the authorization endpoint go back to the
client's registered redirect URI; errors at the token endpoint are JSON."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode

import httpx2

from tests.support import (
    Browser,
    Hub,
    RelyingParty,
    authorize_through,
    location_params,
    sign_in_through,
)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize_url(rp: RelyingParty, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": rp.client_id,
        "redirect_uri": rp.redirect_uri,
        "scope": "openid",
        "state": "st-123",
    } | params
    return "/authorize?" + urlencode(query)


def assert_redirected_error(rp: RelyingParty, hub: Hub, response: httpx2.Response, error: str) -> None:
    assert response.status_code == 302
    assert response.headers["location"].startswith(rp.redirect_uri + "?")
    params = location_params(response)
    assert params["error"] == error
    assert params["state"] == "st-123"
    assert params["iss"] == hub.url
    assert "code" not in params


async def test_authorization_request_without_code_challenge_is_refused(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    response = await browser.go(authorize_url(rp))
    assert_redirected_error(rp, hub, response, "invalid_request")
    assert "PKCE is required" in location_params(response)["error_description"]


async def test_without_code_challenge_is_refused_for_a_signed_in_person_too(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    await sign_in_through(rp, browser)
    response = await browser.go(authorize_url(rp))
    assert_redirected_error(rp, hub, response, "invalid_request")


async def test_plain_code_challenge_method_is_refused(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    verifier = secrets.token_urlsafe(48)
    response = await browser.go(authorize_url(rp, code_challenge=verifier, code_challenge_method="plain"))
    assert_redirected_error(rp, hub, response, "invalid_request")
    assert "S256" in location_params(response)["error_description"]


async def test_code_challenge_without_method_is_refused(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    # RFC 7636 section 4.3: an absent method means "plain", which the hub does not accept.
    response = await browser.go(authorize_url(rp, code_challenge=s256(secrets.token_urlsafe(48))))
    assert_redirected_error(rp, hub, response, "invalid_request")


async def test_malformed_code_challenge_is_refused(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    response = await browser.go(authorize_url(rp, code_challenge="too-short", code_challenge_method="S256"))
    assert_redirected_error(rp, hub, response, "invalid_request")


async def test_s256_challenge_is_accepted(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    challenge = s256(secrets.token_urlsafe(48))
    response = await browser.go(authorize_url(rp, code_challenge=challenge, code_challenge_method="S256"))
    # Not an error redirect: the person is sent to sign in.
    assert response.status_code == 200
    assert 'name="password"' in response.text


async def test_wrong_code_verifier_is_invalid_grant(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    response = await rp.exchange(callback, kept, code_verifier=secrets.token_urlsafe(48))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert response.headers["cache-control"] == "no-store"
    assert "access_token" not in response.json()


async def test_missing_code_verifier_is_invalid_request(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    response = await rp.exchange(callback, kept, code_verifier=None)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"


async def test_malformed_code_verifier_is_invalid_request(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    response = await rp.exchange(callback, kept, code_verifier="short")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_the_right_code_verifier_gets_tokens(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    response = await rp.exchange(callback, kept)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert {"access_token", "id_token", "refresh_token", "expires_in", "scope"} <= set(body)
