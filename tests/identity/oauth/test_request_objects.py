"""Signed request objects (RFC 9101, OIDC Core 6.1): the authorization request as a JWT the
service signs with a key of its JWK Set, by value at /authorize or inside a pushed request."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.identity.oauth.test_authorize import is_error_page, pkce
from tests.identity.oauth.test_par import front_url, through
from tests.support import SQLITE_ALONE, Browser, Hub, RelyingParty, query_params

pytestmark = SQLITE_ALONE

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
async def signer(hub: Hub) -> tuple[RelyingParty, ECKey]:
    """A private_key_jwt service with its key registered inline, and Ann."""
    key = ECKey.generate_key("P-256")
    key.ensure_kid()
    created = await hub.add_service(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]})
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, created.client_id, None)
    await rp.discover()
    return rp, key


def request_object(rp: RelyingParty, key: ECKey, **changes: Any) -> tuple[str, dict[str, str]]:
    """A signed request object (``changes`` override its claims; None drops one) and what the RP keeps."""
    verifier, challenge = pkce()
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": rp.client_id,
        "aud": rp.hub.url,
        "client_id": rp.client_id,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "response_type": "code",
        "redirect_uri": rp.redirect_uri,
        "scope": rp.scope,
        "state": secrets.token_urlsafe(12),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "max_age": 3600,
    }
    claims |= changes
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key), {"state": claims.get("state", ""), "code_verifier": verifier}


def by_value(rp: RelyingParty, obj: str, **beside: str) -> str:
    return f"{rp.hub.url}/authorize?{urlencode({'client_id': rp.client_id, 'request': obj} | beside)}"


def assertion(rp: RelyingParty, key: ECKey) -> dict[str, str]:
    signed = private_key_jwt_sign(key, client_id=rp.client_id, token_endpoint=rp.hub.url, alg="ES256", expires_in=60)
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}


async def test_a_signed_request_object_completes_the_code_flow(hub: Hub, signer: tuple[RelyingParty, ECKey], browser: Browser) -> None:
    rp, key = signer
    obj, kept = request_object(rp, key)
    # Parameters beside the object do not count (RFC 9101 section 6.3).
    page = await through(browser, by_value(rp, obj, state="tampered", scope="openid", redirect_uri="https://evil.example/cb"))
    assert page.status_code == 302, page.text[:1000]
    callback = page.headers["location"]
    assert callback.startswith(rp.redirect_uri) and query_params(callback)["state"] == kept["state"]
    token = await rp.exchange(callback, kept, auth=None, **assertion(rp, key))
    assert token.status_code == 200, token.text
    assert "refresh_token" in token.json()  # the object's scope (offline_access), not the one beside it

    # Its jti is used once.
    again = await browser.go(by_value(rp, obj))
    assert is_error_page(again, "invalid_request_object"), again.text[:500]


async def test_bad_request_objects_are_refused(hub: Hub, signer: tuple[RelyingParty, ECKey], browser: Browser) -> None:
    rp, key = signer
    now = int(time.time())
    other = ECKey.generate_key("P-256")
    other.ensure_kid()
    refused = {
        "wrong aud": request_object(rp, key, aud="https://other.example")[0],
        "token endpoint as aud": request_object(rp, key, aud=f"{hub.url}/token")[0],
        "wrong iss": request_object(rp, key, iss="someone-else")[0],
        "client_id inside differs": request_object(rp, key, client_id="someone-else")[0],
        "no exp": request_object(rp, key, exp=None)[0],
        "expired": request_object(rp, key, exp=now - 120)[0],
        "not yet valid": request_object(rp, key, nbf=now + 600)[0],
        "issued in the future": request_object(rp, key, iat=now + 600)[0],
        "no jti": request_object(rp, key, jti=None)[0],
        "another key": request_object(rp, other)[0],
    }
    for why, obj in refused.items():
        page = await browser.go(by_value(rp, obj))
        assert is_error_page(page, "invalid_request_object"), (why, page.text[:500])


async def test_an_unsigned_request_object_stays_unsupported(hub: Hub, signer: tuple[RelyingParty, ECKey], browser: Browser) -> None:
    rp, key = signer
    obj, _ = request_object(rp, key)
    header, payload, _sig = obj.split(".")
    unsigned = "eyJhbGciOiJub25lIn0." + payload + "."
    page = await browser.go(by_value(rp, unsigned, redirect_uri=rp.redirect_uri, response_type="code", scope="openid"))
    assert page.status_code == 302
    assert query_params(page.headers["location"])["error"] == "request_not_supported"
    pushed = await rp.post("/par", {"client_id": rp.client_id, "request": unsigned, **assertion(rp, key)}, auth=None)
    assert pushed.status_code == 400 and pushed.json()["error"] == "request_not_supported"


async def test_a_request_object_inside_a_pushed_request(hub: Hub, signer: tuple[RelyingParty, ECKey], browser: Browser) -> None:
    rp, key = signer
    obj, kept = request_object(rp, key)
    pushed = await rp.post("/par", {"client_id": rp.client_id, "request": obj, "state": "beside", **assertion(rp, key)}, auth=None)
    assert pushed.status_code == 201, pushed.text
    page = await through(browser, front_url(rp, pushed.json()["request_uri"]))
    assert page.status_code == 302, page.text[:1000]
    assert query_params(page.headers["location"])["state"] == kept["state"]

    replayed = await rp.post("/par", {"client_id": rp.client_id, "request": obj, **assertion(rp, key)}, auth=None)
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_request_object"
    wrong_aud, _ = request_object(rp, key, aud="https://other.example")
    refused = await rp.post("/par", {"client_id": rp.client_id, "request": wrong_aud, **assertion(rp, key)}, auth=None)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request_object"


async def test_discovery_says_request_objects_are_supported(hub: Hub, signer: tuple[RelyingParty, ECKey]) -> None:
    rp, _ = signer
    assert rp.metadata["request_parameter_supported"] is True
    assert rp.metadata["request_uri_parameter_supported"] is False
    assert "ES256" in rp.metadata["request_object_signing_alg_values_supported"]
    assert "none" not in rp.metadata["request_object_signing_alg_values_supported"]
    assert rp.metadata["require_signed_request_object"] is False  # per service


async def test_a_service_may_be_made_to_sign_its_requests(hub: Hub, browser: Browser) -> None:
    key = ECKey.generate_key("P-256")
    key.ensure_kid()
    created = await hub.add_service(
        token_endpoint_auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]}, require_signed_request_object=True
    )
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, created.client_id, None)
    await rp.discover()
    plain = f"{hub.url}/authorize?{urlencode({'client_id': rp.client_id, 'response_type': 'code', 'redirect_uri': rp.redirect_uri, 'scope': 'openid'})}"
    assert is_error_page(await browser.go(plain), "invalid_request")
    refused = await rp.post("/par", {"client_id": rp.client_id, "response_type": "code", "redirect_uri": rp.redirect_uri, **assertion(rp, key)}, auth=None)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"

    obj, kept = request_object(rp, key)
    page = await through(browser, by_value(rp, obj))
    assert page.status_code == 302 and query_params(page.headers["location"])["state"] == kept["state"]
    obj, _ = request_object(rp, key)
    pushed = await rp.post("/par", {"client_id": rp.client_id, "request": obj, **assertion(rp, key)}, auth=None)
    assert pushed.status_code == 201, pushed.text
    page = await through(browser, front_url(rp, pushed.json()["request_uri"]))
    assert page.status_code == 302


async def test_a_public_client_with_keys_signs_its_requests(hub: Hub, browser: Browser) -> None:
    key = ECKey.generate_key("P-256")
    key.ensure_kid()
    created = await hub.add_service(
        name="App", token_endpoint_auth_method="none", jwks={"keys": [key.as_dict(private=False)]}, redirect_uris=["https://app.example/cb"]
    )
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, created.client_id, None, redirect_uri="https://app.example/cb")
    await rp.discover()
    obj, kept = request_object(rp, key)
    page = await through(browser, by_value(rp, obj))
    assert page.status_code == 302, page.text[:1000]
    token = await rp.exchange(page.headers["location"], kept, auth="none")
    assert token.status_code == 200, token.text
