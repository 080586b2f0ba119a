"""The refresh-token grant (RFC 6749 section 6) with rotation: every refresh issues a new
refresh token, and reuse of a rotated one revokes the whole family (RFC 9700 section 4.14.2)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx2
import pytest
from sqlalchemy import update

from identity.appkeys import DB
from identity.db.models import Consent, Token, utcnow
from identity.tokens import digest
from tests.support import Browser, Hub, RelyingParty, sign_in_through

FULL_SCOPE = "openid profile email offline_access"


@pytest.fixture
async def tokens(rp: RelyingParty, browser: Browser) -> dict[str, Any]:
    token, _ = await sign_in_through(rp, browser)
    assert token["scope"] == FULL_SCOPE
    return token


async def refresh(rp: RelyingParty, refresh_token: str, **extra: str) -> httpx2.Response:
    return await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": refresh_token} | extra)


def assert_error(response: httpx2.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert "access_token" not in response.json()
    assert response.headers["cache-control"] == "no-store"


async def active(rp: RelyingParty, token: str) -> bool:
    response = await rp.post("/introspect", {"token": token})
    assert response.status_code == 200
    return response.json()["active"]


async def test_refresh_rotates_both_tokens(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    response = await refresh(rp, tokens["refresh_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    new = response.json()
    assert new["token_type"] == "Bearer"
    assert new["scope"] == FULL_SCOPE
    assert new["expires_in"] == hub.settings.access_token_ttl
    assert new["access_token"] != tokens["access_token"]
    assert new["refresh_token"] != tokens["refresh_token"]
    assert (await hub.userinfo(new["access_token"])).status_code == 200
    assert await active(rp, new["refresh_token"])
    # The rotated refresh token is spent.
    assert not await active(rp, tokens["refresh_token"])


async def test_authlib_client_refreshes(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    async with rp.client(token=tokens) as client:
        new = await client.refresh_token(rp.metadata["token_endpoint"])
    assert new["access_token"] != tokens["access_token"]
    assert new["refresh_token"] != tokens["refresh_token"]
    assert (await hub.userinfo(new["access_token"])).status_code == 200


async def test_refresh_with_client_secret_post(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    response = await rp.post(
        "/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth="client_secret_post"
    )
    assert response.status_code == 200
    assert response.json()["refresh_token"] != tokens["refresh_token"]


async def test_reused_refresh_token_revokes_the_whole_family(
    hub: Hub, rp: RelyingParty, tokens: dict[str, Any]
) -> None:
    second = (await refresh(rp, tokens["refresh_token"])).json()
    third = (await refresh(rp, second["refresh_token"])).json()
    assert (await hub.userinfo(third["access_token"])).status_code == 200

    # An attacker (or a confused client) presents the first, already rotated, refresh token.
    assert_error(await refresh(rp, tokens["refresh_token"]), 400, "invalid_grant")

    for access in (tokens["access_token"], second["access_token"], third["access_token"]):
        info = await hub.userinfo(access)
        assert info.status_code == 401
        assert 'error="invalid_token"' in info.headers["www-authenticate"]
        assert not await active(rp, access)
    # The newest refresh token, never used, is revoked with its family.
    assert not await active(rp, third["refresh_token"])
    assert_error(await refresh(rp, third["refresh_token"]), 400, "invalid_grant")


async def test_reuse_does_not_touch_other_grants(
    hub: Hub, rp: RelyingParty, browser: Browser, tokens: dict[str, Any]
) -> None:
    other, _ = await sign_in_through(rp, browser)
    assert (await refresh(rp, tokens["refresh_token"])).status_code == 200
    assert_error(await refresh(rp, tokens["refresh_token"]), 400, "invalid_grant")
    assert (await hub.userinfo(other["access_token"])).status_code == 200
    assert (await refresh(rp, other["refresh_token"])).status_code == 200


async def test_wider_scope_is_invalid_scope(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    # "phone" is registered for the service, but the person did not grant it.
    response = await refresh(rp, tokens["refresh_token"], scope=FULL_SCOPE + " phone")
    assert_error(response, 400, "invalid_scope")
    # A refused request does not spend the refresh token.
    assert (await refresh(rp, tokens["refresh_token"])).status_code == 200


async def test_unknown_scope_is_invalid_scope(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    assert_error(await refresh(rp, tokens["refresh_token"], scope="openid admin"), 400, "invalid_scope")


async def test_narrower_scope_works(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    response = await refresh(rp, tokens["refresh_token"], scope="openid email")
    assert response.status_code == 200
    narrowed = response.json()
    assert narrowed["scope"] == "openid email"
    assert "refresh_token" in narrowed
    info = await hub.userinfo(narrowed["access_token"])
    assert info.status_code == 200
    assert set(info.json()) == {"sub", "email", "email_verified"}


async def test_narrowing_once_keeps_the_refresh_token_scope(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    # RFC 6749 section 6: a new refresh token has the scope of the one presented, and an
    # omitted scope means the scope the person originally granted.
    narrowed = (await refresh(rp, tokens["refresh_token"], scope="openid email")).json()
    response = await refresh(rp, narrowed["refresh_token"])
    assert response.status_code == 200
    assert response.json()["scope"] == FULL_SCOPE
    again = await refresh(rp, response.json()["refresh_token"], scope="openid profile")
    assert again.status_code == 200
    assert again.json()["scope"] == "openid profile"


async def test_no_refresh_token_without_offline_access(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    rp.scope = "openid profile email"
    token, _ = await sign_in_through(rp, browser)
    assert token["scope"] == "openid profile email"
    assert "refresh_token" not in token
    # Nor can the access token stand in for one.
    assert_error(await refresh(rp, token["access_token"]), 400, "invalid_grant")


async def test_refresh_token_of_another_client_is_invalid_grant(
    hub: Hub, rp: RelyingParty, tokens: dict[str, Any]
) -> None:
    forum = await hub.add_service(name="Forum")
    other = RelyingParty(hub, forum.client_id, forum.client_secret)
    assert_error(await refresh(other, tokens["refresh_token"]), 400, "invalid_grant")
    # The owner's token is untouched.
    assert (await refresh(rp, tokens["refresh_token"])).status_code == 200


async def test_unknown_refresh_token_is_invalid_grant(hub: Hub, rp: RelyingParty) -> None:
    assert_error(await refresh(rp, "not-a-refresh-token"), 400, "invalid_grant")


async def test_missing_refresh_token_is_invalid_request(hub: Hub, rp: RelyingParty) -> None:
    assert_error(await rp.post("/token", {"grant_type": "refresh_token"}), 400, "invalid_request")


async def test_expired_refresh_token_is_invalid_grant(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    async with hub.app[DB].begin() as db:
        result = await db.execute(
            update(Token)
            .where(Token.refresh_hash == digest(tokens["refresh_token"]))
            .values(refresh_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
        assert result.rowcount == 1
    assert_error(await refresh(rp, tokens["refresh_token"]), 400, "invalid_grant")


async def test_refresh_after_consent_is_withdrawn_is_invalid_grant(
    hub: Hub, rp: RelyingParty, tokens: dict[str, Any]
) -> None:
    async with hub.app[DB].begin() as db:
        result = await db.execute(update(Consent).values(revoked_at=utcnow()))
        assert result.rowcount == 1
    assert_error(await refresh(rp, tokens["refresh_token"]), 400, "invalid_grant")


async def test_wrong_client_secret_is_invalid_client(hub: Hub, rp: RelyingParty, tokens: dict[str, Any]) -> None:
    impostor = RelyingParty(hub, rp.client_id, "not-the-secret")
    response = await refresh(impostor, tokens["refresh_token"])
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert (await refresh(rp, tokens["refresh_token"])).status_code == 200


async def test_concurrent_use_of_one_refresh_token_counts_as_reuse(rp: RelyingParty, tokens: dict[str, Any]) -> None:
    """Two requests racing with the same refresh token: one wins, the other is a reuse, and the
    reuse revokes the family, including what the winner just received."""
    import asyncio

    first, second = await asyncio.gather(refresh(rp, tokens["refresh_token"]), refresh(rp, tokens["refresh_token"]))
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [200, 400]
    winner = first if first.status_code == 200 else second
    loser = second if winner is first else first
    assert loser.json()["error"] == "invalid_grant"
    assert not await active(rp, winner.json()["access_token"])
    assert not await active(rp, winner.json()["refresh_token"])
