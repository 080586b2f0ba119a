"""DPoP (RFC 9449): tokens bound to the client's key at the token endpoint (with a server nonce),
used at userinfo and the JSON API only with a proof of that key, refreshed with it."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import httpx2
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OctKey

from identity.oidc.dpop import access_token_hash
from tests.support import Hub, RelyingParty, authorize_through

pytestmark = pytest.mark.usefixtures("hub")


def proof(
    key: ECKey,
    method: str,
    url: str,
    *,
    nonce: str | None = None,
    access_token: str | None = None,
    iat: float | None = None,
    jti: str | None = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A DPoP proof as a client makes one (section 4.2)."""
    body: dict[str, Any] = {"jti": jti or secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(iat or time.time())}
    if nonce is not None:
        body["nonce"] = nonce
    if access_token is not None:
        body["ath"] = access_token_hash(access_token)
    body |= claims
    protected = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)} | (header or {})
    return jws.serialize_compact(protected, json.dumps(body).encode(), key)


async def nonce_for(rp: RelyingParty, key: ECKey) -> str:
    """The nonce the token endpoint asks for: a proof without one gets use_dpop_nonce."""
    answer = await rp.post("/token", {"grant_type": "client_credentials"}, headers={"DPoP": proof(key, "POST", f"{rp.hub.url}/token")})
    assert answer.status_code == 400 and answer.json()["error"] == "use_dpop_nonce", answer.text
    return answer.headers["dpop-nonce"]


async def bound_tokens(rp: RelyingParty, browser: Any, key: ECKey) -> dict[str, Any]:
    callback, kept = await authorize_through(rp, browser)
    nonce = await nonce_for(rp, key)
    answer = await rp.exchange(callback, kept, headers={"DPoP": proof(key, "POST", f"{rp.hub.url}/token", nonce=nonce)})
    assert answer.status_code == 200, answer.text
    assert answer.headers["dpop-nonce"]
    return answer.json()


async def userinfo(hub: Hub, token: str, *, scheme: str = "DPoP", dpop: str | None = None, method: str = "GET") -> httpx2.Response:
    headers = {"Authorization": f"{scheme} {token}"}
    if dpop is not None:
        headers["DPoP"] = dpop
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.request(method, "/userinfo", headers=headers)


async def test_a_bound_token_is_used_with_a_proof_of_its_key(hub: Hub, rp: RelyingParty, browser: Any) -> None:
    key = ECKey.generate_key("P-256")
    token = await bound_tokens(rp, browser, key)
    assert token["token_type"] == "DPoP"
    access = token["access_token"]
    url = f"{hub.url}/userinfo"

    ok = await userinfo(hub, access, dpop=proof(key, "GET", url, access_token=access))
    assert ok.status_code == 200, ok.text
    assert ok.json()["email"] == "ann@example.com"
    # htu is compared without query or fragment.
    assert (await userinfo(hub, access, dpop=proof(key, "GET", url + "?x=1#f", access_token=access))).status_code == 200

    # The hub's JSON API takes it the same way, and not as a Bearer token.
    me = f"{hub.url}/api/v1/me"
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        api = await http.get("/api/v1/me", headers={"Authorization": f"DPoP {access}", "DPoP": proof(key, "GET", me, access_token=access)})
        assert api.status_code == 200 and "ann@example.com" in api.text, api.text
        plain = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {access}"})
        assert plain.status_code == 401 and plain.json()["error"] == "invalid_token"

    # Introspection tells the resource server which key (RFC 9449 section 6.2).
    seen = (await rp.post("/introspect", {"token": access})).json()
    assert seen["active"] and seen["token_type"] == "DPoP" and seen["cnf"] == {"jkt": key.thumbprint()}


async def test_a_bound_token_is_no_bearer_token(hub: Hub, rp: RelyingParty, browser: Any) -> None:
    key = ECKey.generate_key("P-256")
    access = (await bound_tokens(rp, browser, key))["access_token"]
    plain = await userinfo(hub, access, scheme="Bearer")
    assert plain.status_code == 401 and plain.json()["error"] == "invalid_token"
    assert plain.headers["www-authenticate"].startswith("Bearer error=\"invalid_token\"")
    # The proof must come with it, too.
    bare = await userinfo(hub, access)
    assert bare.status_code == 401 and bare.json()["error"] == "invalid_dpop_proof"
    assert bare.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"') and 'algs="' in bare.headers["www-authenticate"]


async def test_proofs_for_another_request_or_key_are_refused(hub: Hub, rp: RelyingParty, browser: Any) -> None:
    key = ECKey.generate_key("P-256")
    access = (await bound_tokens(rp, browser, key))["access_token"]
    url = f"{hub.url}/userinfo"
    refused = {
        "another URL": proof(key, "GET", f"{hub.url}/api/v1/me", access_token=access),
        "another method": proof(key, "POST", url, access_token=access),
        "a stale iat": proof(key, "GET", url, access_token=access, iat=time.time() - 300),
        "an iat in the future": proof(key, "GET", url, access_token=access, iat=time.time() + 300),
        "a wrong ath": proof(key, "GET", url, access_token=access + "x"),
        "no ath": proof(key, "GET", url),
        "another typ": proof(key, "GET", url, access_token=access, header={"typ": "JWT"}),
        "a private key in jwk": proof(key, "GET", url, access_token=access, header={"jwk": key.as_dict(private=True)}),
    }
    for why, text in refused.items():
        answer = await userinfo(hub, access, dpop=text)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_dpop_proof", why
    other = ECKey.generate_key("P-256")
    answer = await userinfo(hub, access, dpop=proof(other, "GET", url, access_token=access))
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
    # A symmetric algorithm is refused.
    oct_key = OctKey.generate_key(256)
    hs = jws.serialize_compact(
        {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct"}},
        json.dumps({"jti": "a", "htm": "GET", "htu": url, "iat": int(time.time()), "ath": access_token_hash(access)}).encode(),
        oct_key,
        algorithms=["HS256"],
    )
    answer = await userinfo(hub, access, dpop=hs)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_dpop_proof"


async def test_a_proof_is_used_once(hub: Hub, rp: RelyingParty, browser: Any) -> None:
    key = ECKey.generate_key("P-256")
    access = (await bound_tokens(rp, browser, key))["access_token"]
    once = proof(key, "GET", f"{hub.url}/userinfo", access_token=access)
    assert (await userinfo(hub, access, dpop=once)).status_code == 200
    replayed = await userinfo(hub, access, dpop=once)
    assert replayed.status_code == 401 and replayed.json()["error"] == "invalid_dpop_proof"


async def test_the_token_endpoint_demands_its_nonce(hub: Hub, rp: RelyingParty, browser: Any) -> None:
    key = ECKey.generate_key("P-256")
    callback, kept = await authorize_through(rp, browser)
    token_url = f"{hub.url}/token"
    for nonce in (None, "made-up"):
        answer = await rp.exchange(callback, kept, headers={"DPoP": proof(key, "POST", token_url, nonce=nonce)})
        assert answer.status_code == 400 and answer.json()["error"] == "use_dpop_nonce"
        assert answer.headers["dpop-nonce"]
    # The code was not spent by the refusals; a proof with the nonce gets the tokens.
    nonce = answer.headers["dpop-nonce"]
    used = proof(key, "POST", token_url, nonce=nonce)
    good = await rp.exchange(callback, kept, headers={"DPoP": used})
    assert good.status_code == 200 and good.json()["token_type"] == "DPoP"
    # A proof is used once at the token endpoint too.
    again = await rp.post("/token", {"grant_type": "client_credentials"}, headers={"DPoP": used})
    assert again.status_code == 400 and again.json()["error"] == "invalid_dpop_proof"
    wrong_url = await rp.post("/token", {"grant_type": "client_credentials"}, headers={"DPoP": proof(key, "POST", f"{hub.url}/par", nonce=nonce)})
    assert wrong_url.status_code == 400 and wrong_url.json()["error"] == "invalid_dpop_proof"


async def test_a_public_clients_refresh_token_is_bound_to_its_key(hub: Hub, browser: Any) -> None:
    service = await hub.add_service(name="App", token_endpoint_auth_method="none", redirect_uris=["https://app.example/cb"])
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, None, redirect_uri="https://app.example/cb")
    await rp.discover()
    key = ECKey.generate_key("P-256")
    callback, kept = await authorize_through(rp, browser)
    token_url = f"{hub.url}/token"
    first = await rp.exchange(callback, kept, auth="none", headers={"DPoP": proof(key, "POST", token_url)})
    nonce = first.headers["dpop-nonce"]
    first = await rp.exchange(callback, kept, auth="none", headers={"DPoP": proof(key, "POST", token_url, nonce=nonce)})
    assert first.status_code == 200, first.text
    refresh = first.json()["refresh_token"]

    for headers in ({}, {"DPoP": proof(ECKey.generate_key("P-256"), "POST", token_url, nonce=nonce)}):
        stolen = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": refresh}, auth="none", headers=headers)
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant", stolen.text

    renewed = await rp.post(
        "/token", {"grant_type": "refresh_token", "refresh_token": refresh}, auth="none",
        headers={"DPoP": proof(key, "POST", token_url, nonce=nonce)},
    )
    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    assert body["token_type"] == "DPoP"
    url = f"{hub.url}/userinfo"
    assert (await userinfo(hub, body["access_token"], dpop=proof(key, "GET", url, access_token=body["access_token"]))).status_code == 200


async def test_a_confidential_clients_refresh_binds_the_new_access_token(hub: Hub, rp: RelyingParty, browser: Any) -> None:
    key = ECKey.generate_key("P-256")
    token = await bound_tokens(rp, browser, key)
    # Its refresh token is not bound (the client authenticates): refreshed without DPoP, Bearer.
    plain = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert plain.status_code == 200 and plain.json()["token_type"] == "Bearer"


async def test_a_service_may_require_dpop(hub: Hub, browser: Any) -> None:
    service = await hub.add_service(name="Bank", require_dpop=True)
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    callback, kept = await authorize_through(rp, browser)
    refused = await rp.exchange(callback, kept)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_dpop_proof"
    key = ECKey.generate_key("P-256")
    nonce = await nonce_for(rp, key)
    granted = await rp.exchange(callback, kept, headers={"DPoP": proof(key, "POST", f"{hub.url}/token", nonce=nonce)})
    assert granted.status_code == 200 and granted.json()["token_type"] == "DPoP"


async def test_a_code_for_a_key_is_exchanged_with_that_key(hub: Hub, rp: RelyingParty, browser: Any) -> None:
    key = ECKey.generate_key("P-256")
    callback, kept = await authorize_through(rp, browser, dpop_jkt=key.thumbprint())
    nonce = await nonce_for(rp, key)
    token_url = f"{hub.url}/token"
    assert (await rp.exchange(callback, kept)).json()["error"] == "invalid_grant"
    other = ECKey.generate_key("P-256")
    assert (await rp.exchange(callback, kept, headers={"DPoP": proof(other, "POST", token_url, nonce=nonce)})).json()["error"] == "invalid_grant"
    good = await rp.exchange(callback, kept, headers={"DPoP": proof(key, "POST", token_url, nonce=nonce)})
    assert good.status_code == 200 and good.json()["token_type"] == "DPoP"


async def test_service_tokens_are_bound_too_and_the_api_wants_the_proof(hub: Hub, rp: RelyingParty) -> None:
    key = ECKey.generate_key("P-256")
    nonce = await nonce_for(rp, key)
    answer = await rp.post("/token", {"grant_type": "client_credentials"}, headers={"DPoP": proof(key, "POST", f"{hub.url}/token", nonce=nonce)})
    assert answer.status_code == 200 and answer.json()["token_type"] == "DPoP"
    access = answer.json()["access_token"]
    url = f"{hub.url}/api/v1/sync/status"
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        plain = await http.get("/api/v1/sync/status", headers={"Authorization": f"Bearer {access}"})
        assert plain.status_code == 401 and plain.json()["error"] == "invalid_token"
        bound = await http.get(
            "/api/v1/sync/status", headers={"Authorization": f"DPoP {access}", "DPoP": proof(key, "GET", url, access_token=access)}
        )
        assert bound.status_code == 200, bound.text


async def test_discovery_lists_the_proof_algorithms(hub: Hub, rp: RelyingParty) -> None:
    assert "ES256" in rp.metadata["dpop_signing_alg_values_supported"]
    assert "HS256" not in rp.metadata["dpop_signing_alg_values_supported"]
