"""Token revocation (RFC 7009)."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from tests.support import Browser, Hub, RelyingParty, sign_in_through


@pytest.fixture
async def tokens(rp: RelyingParty, browser: Browser) -> dict[str, Any]:
    token, _ = await sign_in_through(rp, browser)
    return token


async def revoke(rp: RelyingParty, token: str, auth: str | None = "client_secret_basic", **extra: str) -> httpx2.Response:
    return await rp.post("/revoke", {"token": token} | extra, auth=auth)


async def refresh(rp: RelyingParty, refresh_token: str) -> httpx2.Response:
    return await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": refresh_token})


def assert_revoked_ok(response: httpx2.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert response.headers["cache-control"] == "no-store"


def assert_stopped_working(response: httpx2.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["error"] == "invalid_token"


async def test_revoking_an_access_token(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    assert (await hub.userinfo(tokens["access_token"])).status_code == 200
    assert_revoked_ok(await revoke(rp, tokens["access_token"]))
    assert_stopped_working(await hub.userinfo(tokens["access_token"]))
    assert (await rp.post("/introspect", {"token": tokens["access_token"]})).json() == {"active": False}


async def test_revoking_an_access_token_with_its_hint_and_post_auth(
    hub: Hub, rp: RelyingParty, tokens: dict[str, Any]
) -> None:
    response = await revoke(rp, tokens["access_token"], auth="client_secret_post", token_type_hint="access_token")
    assert_revoked_ok(response)
    assert_stopped_working(await hub.userinfo(tokens["access_token"]))


async def test_revoking_an_access_token_also_ends_its_refresh_token(
    hub: Hub, rp: RelyingParty, tokens: dict[str, Any]
) -> None:
    # RFC 7009 section 2.1 allows it; the hub stores both halves as one grant record.
    assert_revoked_ok(await revoke(rp, tokens["access_token"]))
    response = await refresh(rp, tokens["refresh_token"])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_revoking_a_refresh_token_revokes_the_grants_access_tokens(
    hub: Hub, rp: RelyingParty, tokens: dict[str, Any]
) -> None:
    # Rotate once, so the family has two access tokens.
    rotated = (await refresh(rp, tokens["refresh_token"])).json()
    assert (await hub.userinfo(tokens["access_token"])).status_code == 200
    assert (await hub.userinfo(rotated["access_token"])).status_code == 200

    assert_revoked_ok(await revoke(rp, rotated["refresh_token"], token_type_hint="refresh_token"))

    assert_stopped_working(await hub.userinfo(tokens["access_token"]))
    assert_stopped_working(await hub.userinfo(rotated["access_token"]))
    response = await refresh(rp, rotated["refresh_token"])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_a_wrong_hint_does_not_stop_the_search(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    # RFC 7009 section 2.1: the server MUST extend its search across all token types.
    assert_revoked_ok(await revoke(rp, tokens["refresh_token"], token_type_hint="access_token"))
    assert_stopped_working(await hub.userinfo(tokens["access_token"]))


async def test_an_unknown_hint_is_ignored(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    # RFC 7009 section 2.1: the hint is optional and the server MAY ignore it.
    assert_revoked_ok(await revoke(rp, tokens["access_token"], token_type_hint="id_token"))
    assert_stopped_working(await hub.userinfo(tokens["access_token"]))


async def test_revoking_an_unknown_token_is_ok(hub: Hub, rp: RelyingParty) -> None:
    # RFC 7009 section 2.2: invalid tokens do not cause an error response.
    assert_revoked_ok(await revoke(rp, "not-a-token-the-hub-issued"))


async def test_revoking_twice_is_ok(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    assert_revoked_ok(await revoke(rp, tokens["refresh_token"]))
    assert_revoked_ok(await revoke(rp, tokens["refresh_token"]))
    assert_revoked_ok(await revoke(rp, tokens["access_token"]))


async def test_revoking_another_clients_token_is_refused(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    forum = await hub.add_service(name="Forum")
    other = RelyingParty(hub, forum.client_id, forum.client_secret)
    for token in (tokens["access_token"], tokens["refresh_token"]):
        response = await revoke(other, token)
        # RFC 7009 section 2.1: the request is refused (authlib answers invalid_grant).
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"
        assert response.headers["cache-control"] == "no-store"
    # The tokens still work for their owner.
    assert (await hub.userinfo(tokens["access_token"])).status_code == 200
    assert (await rp.post("/introspect", {"token": tokens["access_token"]})).json()["active"] is True
    assert (await refresh(rp, tokens["refresh_token"])).status_code == 200


async def test_missing_token_is_invalid_request(hub: Hub, rp: RelyingParty) -> None:
    response = await rp.post("/revoke", {"token_type_hint": "access_token"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"


async def test_unauthenticated_is_invalid_client(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    response = await revoke(rp, tokens["access_token"], auth=None)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")
    # Nothing was revoked.
    assert (await hub.userinfo(tokens["access_token"])).status_code == 200


async def test_wrong_secret_is_invalid_client(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    impostor = RelyingParty(hub, rp.client_id, "not-the-secret")
    response = await revoke(impostor, tokens["access_token"])
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert 'error="invalid_client"' in response.headers["www-authenticate"]
    assert (await hub.userinfo(tokens["access_token"])).status_code == 200


async def test_json_body_is_invalid_request(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        response = await http.post(
            "/revoke", json={"token": tokens["access_token"]}, auth=httpx2.BasicAuth(rp.client_id, rp.client_secret)
        )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert (await hub.userinfo(tokens["access_token"])).status_code == 200
