"""Token introspection (RFC 7662): a service may introspect only its own tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx2
import pytest
from sqlalchemy import update

from identity.appkeys import DB
from identity.db.models import Token, utcnow
from identity.tokens import digest
from tests.support import Browser, Hub, RelyingParty, sign_in_through

FULL_SCOPE = "openid profile email offline_access"


@pytest.fixture
async def signed_in(rp: RelyingParty, browser: Browser) -> tuple[dict[str, Any], str]:
    """The token response and the person's ``sub`` (from the validated ID token)."""
    token, kept = await sign_in_through(rp, browser)
    claims = await rp.validate_id_token(token, kept["nonce"])
    return token, claims["sub"]


async def introspect(
    rp: RelyingParty, token: str, auth: str | None = "client_secret_basic", **extra: str
) -> httpx2.Response:
    return await rp.post("/introspect", {"token": token} | extra, auth=auth)


def inactive(response: httpx2.Response) -> bool:
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    # RFC 7662 section 2.2: nothing but "active" about a token the caller may not see.
    return response.json() == {"active": False}


async def test_active_access_token(hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]) -> None:
    token, sub = signed_in
    response = await introspect(rp, token["access_token"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body == {
        "active": True,
        "client_id": rp.client_id,
        "scope": FULL_SCOPE,
        "token_type": "Bearer",
        "exp": body["exp"],
        "iat": body["iat"],
        "iss": hub.url,
        "sub": sub,
        "aud": rp.client_id,
    }
    assert isinstance(body["exp"], int) and isinstance(body["iat"], int)
    assert body["exp"] - body["iat"] == hub.settings.access_token_ttl


async def test_active_access_token_with_post_auth_and_hint(
    hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]
) -> None:
    token, sub = signed_in
    response = await introspect(rp, token["access_token"], auth="client_secret_post", token_type_hint="access_token")
    assert response.status_code == 200
    assert response.json()["active"] is True
    assert response.json()["sub"] == sub


async def test_active_refresh_token(hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]) -> None:
    token, sub = signed_in
    response = await introspect(rp, token["refresh_token"], token_type_hint="refresh_token")
    body = response.json()
    assert body == {
        "active": True,
        "client_id": rp.client_id,
        "scope": FULL_SCOPE,
        "token_type": "refresh_token",
        "exp": body["exp"],
        "iat": body["iat"],
        "iss": hub.url,
        "sub": sub,
        "aud": rp.client_id,
    }
    assert body["exp"] - body["iat"] == hub.settings.refresh_token_ttl


async def test_a_wrong_or_unknown_hint_does_not_stop_the_search(
    hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]
) -> None:
    token, _ = signed_in
    assert (await introspect(rp, token["refresh_token"], token_type_hint="access_token")).json()["active"] is True
    assert (await introspect(rp, token["access_token"], token_type_hint="refresh_token")).json()["active"] is True
    assert (await introspect(rp, token["access_token"], token_type_hint="id_token")).json()["active"] is True


async def test_another_clients_token_is_inactive(
    hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]
) -> None:
    token, _ = signed_in
    forum = await hub.add_service(name="Forum")
    other = RelyingParty(hub, forum.client_id, forum.client_secret)
    assert inactive(await introspect(other, token["access_token"]))
    assert inactive(await introspect(other, token["refresh_token"]))
    # Still active for its owner.
    assert (await introspect(rp, token["access_token"])).json()["active"] is True


async def test_unknown_token_is_inactive(hub: Hub, rp: RelyingParty) -> None:
    assert inactive(await introspect(rp, "not-a-token-the-hub-issued"))
    assert inactive(await introspect(rp, ""))


async def test_revoked_tokens_are_inactive(hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]) -> None:
    token, _ = signed_in
    assert (await rp.post("/revoke", {"token": token["refresh_token"]})).status_code == 200
    assert inactive(await introspect(rp, token["access_token"]))
    assert inactive(await introspect(rp, token["refresh_token"]))


async def test_rotated_refresh_token_is_inactive(
    hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]
) -> None:
    token, _ = signed_in
    rotated = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert rotated.status_code == 200
    assert inactive(await introspect(rp, token["refresh_token"]))
    assert (await introspect(rp, rotated.json()["refresh_token"])).json()["active"] is True


async def test_expired_access_token_is_inactive(
    hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]
) -> None:
    token, _ = signed_in
    async with hub.app[DB].begin() as db:
        result = await db.execute(
            update(Token)
            .where(Token.access_hash == digest(token["access_token"]))
            .values(access_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
        assert result.rowcount == 1
    assert inactive(await introspect(rp, token["access_token"]))
    # The refresh token has its own lifetime.
    assert (await introspect(rp, token["refresh_token"])).json()["active"] is True


async def test_unauthenticated_is_invalid_client(
    hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]
) -> None:
    token, _ = signed_in
    response = await introspect(rp, token["access_token"], auth=None)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert "active" not in response.json()


async def test_wrong_secret_is_invalid_client(hub: Hub, rp: RelyingParty, signed_in: tuple[dict[str, Any], str]) -> None:
    token, _ = signed_in
    response = await introspect(RelyingParty(hub, rp.client_id, "not-the-secret"), token["access_token"])
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "active" not in response.json()


async def test_missing_token_is_invalid_request(hub: Hub, rp: RelyingParty) -> None:
    response = await rp.post("/introspect", {"token_type_hint": "access_token"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
