"""The client-credentials grant (RFC 6749 section 4.4): a token for the service itself, with
no person behind it, so no refresh token and no claims."""

from __future__ import annotations

import httpx2
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from sqlalchemy import update

from identity.appkeys import DB
from identity.db.models import Service
from tests.support import Hub, RelyingParty


@pytest.fixture
async def rp(hub: Hub) -> RelyingParty:
    service = await hub.add_service(scope="openid profile email")
    return RelyingParty(hub, service.client_id, service.client_secret)


async def client_token(rp: RelyingParty, auth: str = "client_secret_basic", **extra: str) -> httpx2.Response:
    return await rp.post("/token", {"grant_type": "client_credentials"} | extra, auth=auth)


def assert_error(response: httpx2.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert "access_token" not in response.json()
    assert response.headers["cache-control"] == "no-store"


async def test_basic_auth_gets_a_token_without_refresh_token(hub: Hub, rp: RelyingParty) -> None:
    response = await client_token(rp)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body == {
        "token_type": "Bearer",
        "access_token": body["access_token"],
        "expires_in": hub.settings.access_token_ttl,
        "scope": "",
    }


async def test_post_auth_with_authlib_client(hub: Hub, rp: RelyingParty) -> None:
    async with AsyncOAuth2Client(
        client_id=rp.client_id, client_secret=rp.client_secret, token_endpoint_auth_method="client_secret_post"
    ) as client:
        token = await client.fetch_token(f"{hub.url}/token", grant_type="client_credentials", scope="profile")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "profile"
    assert "refresh_token" not in token
    assert "id_token" not in token


async def test_post_auth_raw(hub: Hub, rp: RelyingParty) -> None:
    response = await client_token(rp, auth="client_secret_post")
    assert response.status_code == 200
    assert "refresh_token" not in response.json()


async def test_offline_access_still_gives_no_refresh_token(hub: Hub) -> None:
    service = await hub.add_service(scope="openid offline_access")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    response = await client_token(rp, scope="openid offline_access")
    assert response.status_code == 200
    assert response.json()["scope"] == "openid offline_access"
    assert "refresh_token" not in response.json()


async def test_introspection_shows_a_token_without_a_person(hub: Hub, rp: RelyingParty) -> None:
    token = (await client_token(rp, scope="openid")).json()["access_token"]
    response = await rp.post("/introspect", {"token": token})
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "active": True,
        "client_id": rp.client_id,
        "scope": "openid",
        "token_type": "Bearer",
        "exp": body["exp"],
        "iat": body["iat"],
        "iss": hub.url,
    }
    assert body["exp"] - body["iat"] == hub.settings.access_token_ttl
    assert "sub" not in body


async def test_userinfo_refuses_a_token_without_openid_scope(hub: Hub, rp: RelyingParty) -> None:
    token = (await client_token(rp)).json()["access_token"]
    response = await hub.userinfo(token)
    # RFC 6750 section 3.1: the token is valid but lacks the scope userinfo needs.
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="openid"'
    assert "sub" not in response.json()


async def test_userinfo_refuses_a_token_with_openid_scope_but_no_person(hub: Hub, rp: RelyingParty) -> None:
    token = (await client_token(rp, scope="openid profile email")).json()["access_token"]
    for method in ("GET", "POST"):
        response = await hub.userinfo(token, method=method)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
        assert response.headers["www-authenticate"].startswith("Bearer ")
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert response.headers["cache-control"] == "no-store"
        assert set(response.json()) <= {"error", "error_description"}


async def test_scope_the_service_is_not_registered_for_is_invalid_scope(hub: Hub, rp: RelyingParty) -> None:
    # The hub supports "address", but this service is registered for openid profile email only.
    assert_error(await client_token(rp, scope="address"), 400, "invalid_scope")
    assert_error(await client_token(rp, scope="openid address"), 400, "invalid_scope")


async def test_unknown_scope_is_invalid_scope(hub: Hub, rp: RelyingParty) -> None:
    assert_error(await client_token(rp, scope="admin"), 400, "invalid_scope")


async def test_wrong_secret_is_invalid_client(hub: Hub, rp: RelyingParty) -> None:
    response = await client_token(RelyingParty(hub, rp.client_id, "not-the-secret"))
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_no_client_authentication_is_invalid_client(hub: Hub, rp: RelyingParty) -> None:
    response = await rp.post("/token", {"grant_type": "client_credentials", "client_id": rp.client_id}, auth=None)
    assert_error(response, 401, "invalid_client")


async def test_service_not_allowed_the_grant_is_unauthorized_client(hub: Hub, rp: RelyingParty) -> None:
    async with hub.app[DB].begin() as db:
        await db.execute(
            update(Service)
            .where(Service.client_id == rp.client_id)
            .values(grant_types=["authorization_code", "refresh_token"])
        )
    assert_error(await client_token(rp), 400, "unauthorized_client")


async def test_a_client_token_can_be_revoked(hub: Hub, rp: RelyingParty) -> None:
    token = (await client_token(rp)).json()["access_token"]
    assert (await rp.post("/revoke", {"token": token})).status_code == 200
    assert (await rp.post("/introspect", {"token": token})).json() == {"active": False}
