"""The token endpoint's authorization-code grant (RFC 6749 sections 4.1.3, 5): single-use codes
whose replay revokes what they issued, codes bound to their client and redirect URI, client
authentication, and the shape of error and success responses."""

from __future__ import annotations

import datetime as dt

import httpx2
import pytest
from sqlalchemy import update

from identity.appkeys import DB
from identity.db.models import AuthorizationCode, utcnow
from identity.tokens import digest
from tests.support import Browser, Hub, RelyingParty, authorize_through, query_params

CALLBACK = "http://127.0.0.1:9/callback"
OTHER_CALLBACK = "http://127.0.0.1:9/other-callback"


@pytest.fixture
async def rp(hub: Hub) -> RelyingParty:
    service = await hub.add_service(redirect_uris=[CALLBACK, OTHER_CALLBACK])
    await hub.add_user(verified=True)
    return RelyingParty(hub, service.client_id, service.client_secret)


def assert_error(response: httpx2.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error
    assert "access_token" not in response.json()
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


async def introspect(rp: RelyingParty, token: str) -> dict[str, object]:
    response = await rp.post("/introspect", {"token": token})
    assert response.status_code == 200
    return response.json()


async def test_success_response_is_json_and_not_cached(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    response = await rp.exchange(callback, kept)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "openid profile email offline_access"
    assert body["expires_in"] == hub.settings.access_token_ttl
    assert {"access_token", "refresh_token", "id_token"} <= set(body)


async def test_replayed_code_is_refused_and_revokes_what_it_issued(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    callback, kept = await authorize_through(rp, browser)
    first = await rp.exchange(callback, kept)
    assert first.status_code == 200
    tokens = first.json()
    assert (await hub.userinfo(tokens["access_token"])).status_code == 200

    second = await rp.exchange(callback, kept)
    assert_error(second, 400, "invalid_grant")

    # RFC 6749 section 4.1.2: the tokens issued from the code are revoked.
    info = await hub.userinfo(tokens["access_token"])
    assert info.status_code == 401
    assert info.headers["www-authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in info.headers["www-authenticate"]
    assert info.json()["error"] == "invalid_token"
    assert await introspect(rp, tokens["access_token"]) == {"active": False}
    assert await introspect(rp, tokens["refresh_token"]) == {"active": False}
    refreshed = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert_error(refreshed, 400, "invalid_grant")


async def test_third_use_of_a_code_is_still_refused(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    assert (await rp.exchange(callback, kept)).status_code == 200
    assert_error(await rp.exchange(callback, kept), 400, "invalid_grant")
    assert_error(await rp.exchange(callback, kept), 400, "invalid_grant")


async def test_expired_code_is_invalid_grant(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    code = query_params(callback)["code"]
    async with hub.app[DB].begin() as db:
        result = await db.execute(
            update(AuthorizationCode)
            .where(AuthorizationCode.code_hash == digest(code))
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
        assert result.rowcount == 1
    assert_error(await rp.exchange(callback, kept), 400, "invalid_grant")


async def test_unknown_code_is_invalid_grant(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    assert_error(await rp.exchange(callback, kept, code="not-a-code-the-hub-issued"), 400, "invalid_grant")


async def test_missing_code_is_invalid_request(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    assert_error(await rp.exchange(callback, kept, code=None), 400, "invalid_request")


async def test_code_of_one_client_is_invalid_grant_for_another(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    callback, kept = await authorize_through(rp, browser)
    # Client B authenticates correctly, with the same redirect URI registered.
    forum = await hub.add_service(name="Forum", redirect_uris=[CALLBACK])
    other = RelyingParty(hub, forum.client_id, forum.client_secret)
    assert_error(await other.exchange(callback, kept), 400, "invalid_grant")


async def test_redirect_uri_differing_from_the_authorization_request_is_invalid_grant(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    callback, kept = await authorize_through(rp, browser)
    # OTHER_CALLBACK is registered for the client, but the code was issued for CALLBACK.
    assert_error(await rp.exchange(callback, kept, redirect_uri=OTHER_CALLBACK), 400, "invalid_grant")


async def test_missing_redirect_uri_is_invalid_grant(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    # RFC 6749 section 4.1.3: required, and identical, when the authorization request had one.
    callback, kept = await authorize_through(rp, browser)
    assert_error(await rp.exchange(callback, kept, redirect_uri=None), 400, "invalid_grant")


async def test_wrong_client_secret_is_invalid_client_with_basic_challenge(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    callback, kept = await authorize_through(rp, browser)
    impostor = RelyingParty(hub, rp.client_id, "not-the-secret")
    response = await impostor.exchange(callback, kept)
    assert_error(response, 401, "invalid_client")
    # RFC 6749 section 5.2: a client that used the Authorization header gets a matching challenge.
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Basic ")
    assert 'error="invalid_client"' in challenge


async def test_wrong_client_secret_in_the_body_is_invalid_client(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    callback, kept = await authorize_through(rp, browser)
    impostor = RelyingParty(hub, rp.client_id, "not-the-secret")
    assert_error(await impostor.exchange(callback, kept, auth="client_secret_post"), 401, "invalid_client")


async def test_unknown_client_is_invalid_client(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    stranger = RelyingParty(hub, "no-such-client", "whatever")
    response = await stranger.exchange(callback, kept)
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_no_client_authentication_is_invalid_client(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    # Naming the client without its secret is not authentication: the hub has no public clients.
    response = await rp.exchange(callback, kept, auth=None, client_id=rp.client_id)
    assert_error(response, 401, "invalid_client")


async def test_client_secret_post_works(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    async with rp.client(state=kept["state"], token_endpoint_auth_method="client_secret_post") as client:
        token = await client.fetch_token(
            rp.metadata["token_endpoint"], authorization_response=callback, code_verifier=kept["code_verifier"]
        )
    assert token["token_type"] == "Bearer"
    assert (await hub.userinfo(token["access_token"])).status_code == 200


async def test_client_secret_post_raw_request(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    response = await rp.exchange(callback, kept, auth="client_secret_post")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"


async def test_unsupported_grant_type(hub: Hub, rp: RelyingParty) -> None:
    response = await rp.post("/token", {"grant_type": "password", "username": "ann@example.com", "password": "x"})
    assert_error(response, 400, "unsupported_grant_type")


async def test_implicit_style_grant_type_is_unsupported(hub: Hub, rp: RelyingParty) -> None:
    response = await rp.post("/token", {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": "x"})
    assert_error(response, 400, "unsupported_grant_type")


async def test_json_body_is_invalid_request(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    callback, kept = await authorize_through(rp, browser)
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        response = await http.post(
            "/token",
            json={
                "grant_type": "authorization_code",
                "code": query_params(callback)["code"],
                "redirect_uri": rp.redirect_uri,
                "code_verifier": kept["code_verifier"],
            },
            auth=httpx2.BasicAuth(rp.client_id, rp.client_secret),
        )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"
    # The refused request did not use the code up.
    assert (await rp.exchange(callback, kept)).status_code == 200


async def test_token_endpoint_takes_only_post(hub: Hub, rp: RelyingParty) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        response = await http.get("/token", params={"grant_type": "client_credentials"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
