"""The UserInfo endpoint (OIDC Core 5.3): the claims the token's scopes release, nothing else,
and RFC 6750 errors with a ``WWW-Authenticate: Bearer`` challenge."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx2
import pytest
from sqlalchemy import update

from identity.accounts.store import find_by_sub, update_details
from identity.appkeys import DB
from identity.db.models import Account, Token, utcnow
from identity.tokens import digest
from tests.support import Browser, Hub, RelyingParty, sign_in_through

ADDRESS = {"street_address": "1 Example Road", "locality": "Exampleton", "postal_code": "EX1 2MP", "country": "GB"}


@pytest.fixture
async def sub(hub: Hub) -> str:
    return await hub.add_user(verified=True)


@pytest.fixture
async def rp(hub: Hub, sub: str) -> RelyingParty:
    service = await hub.add_service()
    return RelyingParty(hub, service.client_id, service.client_secret)


async def token_for(rp: RelyingParty, browser: Browser, scope: str) -> dict[str, Any]:
    rp.scope = scope
    token, _ = await sign_in_through(rp, browser)
    assert token["scope"] == scope
    return token


async def set_details(hub: Hub, sub: str, **changes: Any) -> None:
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await update_details(db, account, changes, channel="support")


def assert_claims(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    return response.json()


def assert_invalid_token(response: httpx2.Response) -> None:
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert response.json()["error"] == "invalid_token"
    assert "sub" not in response.json()
    assert response.headers["cache-control"] == "no-store"


async def test_get_and_post_give_the_same_claims(hub: Hub, rp: RelyingParty, browser: Browser, sub: str) -> None:
    rp.scope = "openid profile email"
    token, kept = await sign_in_through(rp, browser)
    by_get = assert_claims(await hub.userinfo(token["access_token"]))
    by_post = assert_claims(await hub.userinfo(token["access_token"], method="POST"))
    assert by_get == by_post == {
        "sub": sub,
        "name": "Ann Example",
        "given_name": "Ann",
        "family_name": "Example",
        "updated_at": by_get["updated_at"],
        "email": "ann@example.com",
        "email_verified": True,
    }
    assert isinstance(by_get["updated_at"], int)
    # OIDC Core 5.3.2: the sub from userinfo is the sub of the ID token.
    assert (await rp.validate_id_token(token, kept["nonce"]))["sub"] == sub


async def test_openid_email_releases_only_email(hub: Hub, rp: RelyingParty, browser: Browser, sub: str) -> None:
    token = await token_for(rp, browser, "openid email")
    claims = assert_claims(await hub.userinfo(token["access_token"]))
    assert claims == {"sub": sub, "email": "ann@example.com", "email_verified": True}


async def test_an_email_changed_since_says_it_is_unverified(hub: Hub, rp: RelyingParty, browser: Browser, sub: str) -> None:
    token = await token_for(rp, browser, "openid email")
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await update_details(db, account, {"email": "ann.new@example.com"}, channel="person")
    claims = assert_claims(await hub.userinfo(token["access_token"]))
    assert claims == {"sub": sub, "email": "ann.new@example.com", "email_verified": False}


async def test_openid_profile_releases_names_but_no_email(
    hub: Hub, rp: RelyingParty, browser: Browser, sub: str
) -> None:
    token = await token_for(rp, browser, "openid profile")
    claims = assert_claims(await hub.userinfo(token["access_token"]))
    assert claims == {
        "sub": sub,
        "name": "Ann Example",
        "given_name": "Ann",
        "family_name": "Example",
        "updated_at": claims["updated_at"],
    }


async def test_openid_alone_releases_only_sub(hub: Hub, rp: RelyingParty, browser: Browser, sub: str) -> None:
    token = await token_for(rp, browser, "openid")
    assert assert_claims(await hub.userinfo(token["access_token"])) == {"sub": sub}


async def test_phone_and_address(hub: Hub, rp: RelyingParty, browser: Browser, sub: str) -> None:
    await set_details(hub, sub, phone_number="+441632960000", address=ADDRESS)
    token = await token_for(rp, browser, "openid phone address")
    claims = assert_claims(await hub.userinfo(token["access_token"]))
    assert claims == {
        "sub": sub,
        "phone_number": "+441632960000",
        "phone_number_verified": False,
        "address": ADDRESS,
    }


async def test_phone_and_address_are_withheld_without_their_scopes(
    hub: Hub, rp: RelyingParty, browser: Browser, sub: str
) -> None:
    await set_details(hub, sub, phone_number="+441632960000", address=ADDRESS)
    token = await token_for(rp, browser, "openid profile email")
    claims = assert_claims(await hub.userinfo(token["access_token"]))
    assert not {"phone_number", "phone_number_verified", "address"} & set(claims)


async def test_claims_without_a_value_are_left_out(hub: Hub, rp: RelyingParty, browser: Browser, sub: str) -> None:
    # The person has no phone number or address: the scopes release nothing (OIDC Core 5.3.2).
    token = await token_for(rp, browser, "openid phone address")
    assert assert_claims(await hub.userinfo(token["access_token"])) == {"sub": sub}


async def test_claims_are_current(hub: Hub, rp: RelyingParty, browser: Browser, sub: str) -> None:
    token = await token_for(rp, browser, "openid profile")
    await set_details(hub, sub, given_name="Annie")
    claims = assert_claims(await hub.userinfo(token["access_token"]))
    assert claims["given_name"] == "Annie"
    assert claims["name"] == "Annie Example"


async def test_no_token_is_401_with_a_bare_bearer_challenge(hub: Hub) -> None:
    for method in ("GET", "POST"):
        response = await hub.userinfo(None, method=method)
        assert response.status_code == 401
        # RFC 6750 section 3.1: no error code when the request carried no token at all; the
        # DPoP scheme is offered beside Bearer, with its algorithms (RFC 9449 section 7.1).
        assert response.headers["www-authenticate"] == 'Bearer, DPoP algs="RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA"'
        assert response.headers["cache-control"] == "no-store"


async def test_other_authorization_scheme_is_401_with_a_bearer_challenge(hub: Hub) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        response = await http.get("/userinfo", headers={"Authorization": "Basic YW5uOnNlY3JldA=="})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer, DPoP algs=")


async def test_bad_token_is_invalid_token(hub: Hub) -> None:
    assert_invalid_token(await hub.userinfo("not-a-token-the-hub-issued"))
    assert_invalid_token(await hub.userinfo("not-a-token-the-hub-issued", method="POST"))


async def test_refresh_token_is_not_an_access_token(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    token = await token_for(rp, browser, "openid email offline_access")
    assert_invalid_token(await hub.userinfo(token["refresh_token"]))


async def test_expired_token_is_invalid_token(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    token = await token_for(rp, browser, "openid email")
    async with hub.app[DB].begin() as db:
        result = await db.execute(
            update(Token)
            .where(Token.access_hash == digest(token["access_token"]))
            .values(access_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
        assert result.rowcount == 1
    assert_invalid_token(await hub.userinfo(token["access_token"]))


async def test_token_without_openid_scope_is_insufficient_scope(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    token = await token_for(rp, browser, "openid email offline_access")
    narrowed = await rp.post(
        "/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "scope": "email"}
    )
    assert narrowed.status_code == 200
    assert narrowed.json()["scope"] == "email"
    response = await hub.userinfo(narrowed.json()["access_token"])
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    # RFC 6750 section 3: a refused request carries the challenge, naming the scope needed.
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="openid"'
    assert "email" not in response.json()


async def test_account_no_longer_active_is_invalid_token(
    hub: Hub, rp: RelyingParty, browser: Browser, sub: str
) -> None:
    token = await token_for(rp, browser, "openid email")
    async with hub.app[DB].begin() as db:
        await db.execute(update(Account).where(Account.sub == sub).values(status="pending_guardian"))
    assert_invalid_token(await hub.userinfo(token["access_token"]))
