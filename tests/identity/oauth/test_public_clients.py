"""Public clients (``token_endpoint_auth_method=none``): native apps per RFC 8252 and browser
apps, which can keep no secret. PKCE S256 as for everyone, refresh tokens rotated with reuse
detection, loopback redirect URIs on any port, private-use URI schemes; no client_credentials,
no introspection, revocation of their own tokens only."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from aiohttp import web

from identity import admin
from tests.identity.oauth.test_authorize import authorize_url, is_error_page
from tests.support import SQLITE_ALONE, Browser, Hub, LocalServer, RelyingParty, authorize_through, location_params, query_params

pytestmark = SQLITE_ALONE


async def public_rp(hub: Hub, redirect_uri: str, *, person: bool = True, **kwargs: Any) -> RelyingParty:
    kwargs.setdefault("application_type", "native")
    service = await hub.add_service(name="App", redirect_uris=[redirect_uri], token_endpoint_auth_method="none", **kwargs)
    assert service.client_secret is None
    if person:
        await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, None, redirect_uri=redirect_uri)
    await rp.discover()
    return rp


class RedirectListener:
    """A native app's loopback listener: receives the authorization response at /cb."""

    def __init__(self) -> None:
        self.received: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/cb", self.callback)
        self.server = LocalServer(app)

    async def callback(self, request: web.Request) -> web.Response:
        if not self.received.done():
            self.received.set_result(str(request.url))
        return web.Response(text="You may close this window.")


async def test_native_app_completes_the_code_flow_on_a_loopback_port(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "http://127.0.0.1/cb")
    listener = RedirectListener()
    async with listener.server:
        # The app learns its port from the operating system, after registration.
        rp.redirect_uri = f"{listener.server.url}/cb"
        location, kept = await authorize_through(rp, browser)
        async with httpx2.AsyncClient() as http:  # the browser follows the redirect to the app
            assert (await http.get(location)).status_code == 200
        received = await asyncio.wait_for(listener.received, 10)
    assert received.startswith(f"http://127.0.0.1:{listener.server.port}/cb?")
    token = await rp.finish(received, kept)  # authlib, token_endpoint_auth_method "none"
    assert token["token_type"] == "Bearer" and "refresh_token" in token
    assert (await hub.userinfo(token["access_token"])).status_code == 200

    # Rotation: authlib's client refreshes as a public client; reusing the old token kills the family.
    async with rp.client(token=token) as client:
        assert client.token_endpoint_auth_method == "none"
        newer = dict(await client.refresh_token(rp.metadata["token_endpoint"]))
    assert newer["refresh_token"] != token["refresh_token"]
    assert (await hub.userinfo(newer["access_token"])).status_code == 200
    reused = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}, auth="none")
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert (await hub.userinfo(newer["access_token"])).status_code == 401


async def test_ipv6_loopback_matches_on_any_port(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "http://[::1]/cb")
    rp.redirect_uri = "http://[::1]:61234/cb"
    location, _ = await authorize_through(rp, browser)
    assert location.startswith("http://[::1]:61234/cb?") and "code=" in location


@pytest.mark.parametrize(
    "requested",
    [
        "http://127.0.0.1:5000/other",
        "http://127.0.0.1:5000/cb/",
        "http://127.0.0.1:5000/cb?x=1",
        "http://127.0.0.1:5000/cb#x",
        "http://localhost:5000/cb",
        "http://[::1]:5000/cb",
        "https://127.0.0.1:5000/cb",
        "http://127.0.0.1:99999/cb",
        "http://127.0.0.1:5000@evil.example/cb",
    ],
)
async def test_loopback_redirect_must_match_but_for_the_port(hub: Hub, browser: Browser, requested: str) -> None:
    rp = await public_rp(hub, "http://127.0.0.1/cb")
    url, _ = authorize_url(rp, redirect_uri=requested)
    page = await browser.go(url)
    assert is_error_page(page, "invalid_request"), (page.status_code, page.text[:500])


async def test_a_web_client_gets_no_port_leeway(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "http://127.0.0.1:9/callback", application_type="web")
    url, _ = authorize_url(rp, redirect_uri="http://127.0.0.1:10/callback")
    assert is_error_page(await browser.go(url), "invalid_request")


async def test_private_use_scheme_receives_the_code(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "com.example.app:/callback")
    location, kept = await authorize_through(rp, browser)
    assert location.startswith("com.example.app:/callback?")
    assert query_params(location)["iss"] == hub.url
    token = await rp.finish(location, kept)
    assert "refresh_token" in token


async def test_claimed_https_redirect(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "https://app.example.com/oauth/callback")
    location, _ = await authorize_through(rp, browser)
    assert location.startswith("https://app.example.com/oauth/callback?code=")


async def test_pkce_is_required_of_public_clients(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "com.example.app:/callback")
    url, _ = authorize_url(rp, omit=("code_challenge", "code_challenge_method"))
    page = await browser.go(url)
    assert page.status_code == 302
    params = location_params(page)
    assert params["error"] == "invalid_request"


async def test_the_code_needs_the_verifier(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "com.example.app:/callback")
    location, kept = await authorize_through(rp, browser)
    wrong = await rp.exchange(location, kept, auth="none", code_verifier="x" * 50)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


async def test_public_client_may_not_use_client_credentials(hub: Hub) -> None:
    rp = await public_rp(hub, "com.example.app:/callback")
    response = await rp.post("/token", {"grant_type": "client_credentials"}, auth="none")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "unauthorized_client"
    assert "access_token" not in response.json()


async def test_public_client_sending_a_secret_is_refused(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "com.example.app:/callback")
    location, kept = await authorize_through(rp, browser)
    rp.client_secret = "made-up"
    for auth in ("client_secret_basic", "client_secret_post"):
        response = await rp.exchange(location, kept, auth=auth)
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    rp.client_secret = None
    assert (await rp.exchange(location, kept, auth="none")).status_code == 200


async def test_a_confidential_client_may_not_act_as_a_public_one(rp: RelyingParty, browser: Browser) -> None:
    location, kept = await authorize_through(rp, browser)
    response = await rp.exchange(location, kept, auth="none")
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_public_client_revokes_its_own_tokens_only(hub: Hub, browser: Browser, rp: RelyingParty) -> None:
    app = await public_rp(hub, "com.example.app:/callback", person=False)  # Ann comes with rp
    location, kept = await authorize_through(app, browser)
    mine = await app.finish(location, kept)
    theirs, _ = await sign_in_other(rp, browser)

    # Someone else's token: not revoked (RFC 7009 section 2.1: the token was not issued to it).
    await app.post("/revoke", {"token": theirs["refresh_token"]}, auth="none")
    assert (await hub.userinfo(theirs["access_token"])).status_code == 200

    revoked = await app.post("/revoke", {"token": mine["refresh_token"]}, auth="none")
    assert revoked.status_code == 200
    assert (await hub.userinfo(mine["access_token"])).status_code == 401
    again = await app.post("/token", {"grant_type": "refresh_token", "refresh_token": mine["refresh_token"]}, auth="none")
    assert again.json()["error"] == "invalid_grant"


async def sign_in_other(rp: RelyingParty, browser: Browser) -> tuple[dict[str, Any], dict[str, str]]:
    location, kept = await authorize_through(rp, browser)
    return await rp.finish(location, kept), kept


async def test_public_client_may_not_introspect(hub: Hub, browser: Browser) -> None:
    app = await public_rp(hub, "com.example.app:/callback")
    location, kept = await authorize_through(app, browser)
    token = await app.finish(location, kept)
    response = await app.post("/introspect", {"token": token["access_token"]}, auth="none")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "active" not in response.json()


@pytest.mark.parametrize(
    ("uri", "native"),
    [
        ("com.example.app:/callback", False),  # private-use schemes only for native apps
        ("myapp:/callback", True),  # not a reverse domain name
        ("javascript:alert(1)", True),
        ("http://192.168.1.2/cb", True),
        ("http://localhost/cb", True),  # RFC 8252 section 8.3
        ("http://example.com/cb", True),
        ("com.example.app:/callback#x", True),
    ],
)
async def test_registration_refuses_unsafe_redirect_uris(hub: Hub, uri: str, native: bool) -> None:
    with pytest.raises(admin.InvalidInput):
        await hub.add_service(
            redirect_uris=[uri], token_endpoint_auth_method="none", application_type="native" if native else "web"
        )


async def test_discovery_lists_none(hub: Hub) -> None:
    async with httpx2.AsyncClient() as http:
        metadata = (await http.get(f"{hub.url}/.well-known/openid-configuration")).json()
    assert "none" in metadata["token_endpoint_auth_methods_supported"]
    assert "none" in metadata["revocation_endpoint_auth_methods_supported"]
    assert "none" not in metadata["introspection_endpoint_auth_methods_supported"]


async def test_a_native_app_is_never_granted_without_the_person(hub: Hub, browser: Browser) -> None:
    """RFC 8252 section 8.6: another app on the device could use the same client_id and a
    loopback or private-use redirect URI, so a remembered consent does not skip the question."""
    rp = await public_rp(hub, "com.example.app:/callback")
    await authorize_through(rp, browser)  # signed in, consented once
    url, _ = await rp.start()
    again = await browser.go(url)
    assert again.status_code == 200 and "/consent" in again.text
    silent, _ = await rp.start(prompt="none")
    assert query_params((await browser.go(silent)).headers["location"])["error"] == "consent_required"


async def test_a_public_web_app_on_https_keeps_its_remembered_consent(hub: Hub, browser: Browser) -> None:
    rp = await public_rp(hub, "https://spa.example/cb", application_type="web")
    await authorize_through(rp, browser)
    url, _ = await rp.start()
    again = await browser.go(url)
    assert again.status_code == 302 and "code=" in again.headers["location"]
