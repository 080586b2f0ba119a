"""RP-Initiated Logout 1.0 and Back-Channel Logout 1.0: redirection only to registered URIs,
confirmation without an ID token hint, and signed logout tokens POSTed to services."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import BrowserSession
from tests.support import (
    PASSWORD,
    Browser,
    Hub,
    RelyingParty,
    form,
    location_params,
    sign_in_through,
)

EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGGED_OUT = "http://127.0.0.1:9/logged-out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Receiver:
    """A service's back-channel logout endpoint."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    found = Receiver(url=f"http://127.0.0.1:{port}/backchannel-logout")

    async def handle(request: web.Request) -> web.Response:
        body = await request.post()
        found.posts.append(
            {"content_type": request.content_type, "form": {k: v for k, v in body.items() if isinstance(v, str)}}
        )
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_post("/backchannel-logout", handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield found
    finally:
        await server.close()


@pytest.fixture
async def rp(hub: Hub, receiver: Receiver) -> RelyingParty:
    service = await hub.add_service(post_logout_redirect_uris=[LOGGED_OUT], backchannel_logout_uri=receiver.url)
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    return rp


async def jwks(hub: Hub) -> KeySet:
    async with httpx2.AsyncClient(timeout=30) as http:
        return KeySet.import_key_set((await http.get(f"{hub.url}/jwks")).json())


async def decode(hub: Hub, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    decoded = jwt.decode(token, await jwks(hub), algorithms=["RS256", "ES256"])
    return dict(decoded.header), dict(decoded.claims)


async def prompt_none(rp: RelyingParty, browser: Browser) -> dict[str, str]:
    url, _ = await rp.start(prompt="none")
    response = await browser.http.get(url)
    assert response.status_code == 302
    return location_params(response)


async def assert_logout_token(hub: Hub, rp: RelyingParty, token: str, sid: str, sub: str) -> None:
    header, claims = await decode(hub, token)
    assert header["typ"] == "logout+jwt"
    assert header["alg"] in ("RS256", "ES256")
    assert header["kid"]
    assert claims["iss"] == hub.url
    assert claims["aud"] == rp.client_id
    assert claims["sub"] == sub
    assert claims["sid"] == sid
    assert claims["events"] == {EVENT: {}}
    assert "nonce" not in claims
    assert isinstance(claims["iat"], int) and isinstance(claims["exp"], int) and claims["exp"] > claims["iat"]
    assert claims["jti"]


async def test_logout_with_hint_redirects_ends_session_and_notifies(
    hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver
) -> None:
    token, kept = await sign_in_through(rp, browser)
    id_claims = await rp.validate_id_token(token, kept["nonce"])
    secret = browser.http.cookies.get("osi_session")
    assert (await prompt_none(rp, browser)).get("code")

    query = urlencode({"id_token_hint": token["id_token"], "post_logout_redirect_uri": LOGGED_OUT, "state": "st-42"})
    response = await browser.http.get(f"/end-session?{query}")
    assert response.status_code == 302
    assert response.headers["location"] == f"{LOGGED_OUT}?state=st-42"
    assert any(h.startswith("osi_session=") for h in response.headers.get_list("set-cookie"))

    # The session is over: silent authorization needs a sign-in again, even with the old cookie.
    params = await prompt_none(rp, browser)
    assert params["error"] == "login_required"
    async with httpx2.AsyncClient(base_url=hub.url, cookies={"osi_session": secret}, timeout=30) as replay:
        assert (await replay.get("/account")).status_code == 302

    assert len(receiver.posts) == 1
    post = receiver.posts[0]
    assert post["content_type"] == "application/x-www-form-urlencoded"
    assert set(post["form"]) == {"logout_token"}
    await assert_logout_token(hub, rp, post["form"]["logout_token"], id_claims["sid"], id_claims["sub"])


async def test_logout_with_client_id_and_hint(hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver) -> None:
    token, _ = await sign_in_through(rp, browser)
    query = urlencode(
        {"id_token_hint": token["id_token"], "client_id": rp.client_id, "post_logout_redirect_uri": LOGGED_OUT}
    )
    response = await browser.http.get(f"/end-session?{query}")
    assert response.status_code == 302
    assert response.headers["location"] == LOGGED_OUT
    assert len(receiver.posts) == 1


async def test_logout_with_hint_by_post(hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver) -> None:
    token, _ = await sign_in_through(rp, browser)
    response = await browser.http.post(
        "/end-session", data={"id_token_hint": token["id_token"], "post_logout_redirect_uri": LOGGED_OUT, "state": "p"}
    )
    assert response.status_code == 302
    assert response.headers["location"] == f"{LOGGED_OUT}?state=p"
    assert (await prompt_none(rp, browser))["error"] == "login_required"


async def test_unregistered_post_logout_redirect_uri_is_not_followed(
    hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver
) -> None:
    token, _ = await sign_in_through(rp, browser)
    for uri in ("http://127.0.0.1:9/elsewhere", LOGGED_OUT + "/", LOGGED_OUT + "?x=1"):
        query = urlencode({"id_token_hint": token["id_token"], "post_logout_redirect_uri": uri, "state": "s"})
        response = await browser.http.get(f"/end-session?{query}")
        assert response.status_code == 200, uri
        assert "location" not in response.headers
        assert "You are signed out" in response.text
        assert uri not in response.text
    # The hinted session was still ended (once), only the redirection was refused.
    assert (await prompt_none(rp, browser))["error"] == "login_required"
    assert len(receiver.posts) == 1


async def test_client_id_that_does_not_match_the_hint_is_refused(
    hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver
) -> None:
    token, _ = await sign_in_through(rp, browser)
    other = await hub.add_service(name="Forum", redirect_uris=["http://127.0.0.1:9/forum"], post_logout_redirect_uris=[LOGGED_OUT])
    query = urlencode({"id_token_hint": token["id_token"], "client_id": other.client_id, "post_logout_redirect_uri": LOGGED_OUT})
    response = await browser.http.get(f"/end-session?{query}")
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "Sign-out request not accepted" in response.text
    assert "code" in await prompt_none(rp, browser)
    assert receiver.posts == []


async def test_forged_id_token_hint_is_refused(hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver) -> None:
    token, _ = await sign_in_through(rp, browser)
    header, payload, signature = token["id_token"].split(".")
    forged = ".".join([header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
    query = urlencode({"id_token_hint": forged, "post_logout_redirect_uri": LOGGED_OUT})
    response = await browser.http.get(f"/end-session?{query}")
    assert response.status_code == 400
    assert "Sign-out request not accepted" in response.text
    assert "code" in await prompt_none(rp, browser)
    assert receiver.posts == []


async def test_logout_without_hint_asks_first(hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver) -> None:
    token, kept = await sign_in_through(rp, browser)
    id_claims = await rp.validate_id_token(token, kept["nonce"])
    query = urlencode({"client_id": rp.client_id, "post_logout_redirect_uri": LOGGED_OUT, "state": "s1"})
    page = await browser.go(f"/end-session?{query}")
    assert page.status_code == 200
    assert "<h1>Sign out?</h1>" in page.text
    assert "Store asked to sign you out of the hub." in page.text
    confirm = form(page.text, "/end-session")
    assert confirm.fields["csrf_token"]
    assert confirm.fields["state"] == "s1"
    # Nothing has happened yet.
    assert "code" in await prompt_none(rp, browser)
    assert receiver.posts == []

    # A forged confirmation (no valid CSRF token) is refused.
    forged = await browser.http.post("/end-session", data=confirm.fields | {"confirm": "yes", "csrf_token": "x"})
    assert forged.status_code == 403
    assert "code" in await prompt_none(rp, browser)

    done = await browser.http.post("/end-session", data=confirm.fields | {"confirm": "yes"})
    # Without an ID token hint the hub does not redirect (RP-Initiated Logout 1.0 section 3).
    assert done.status_code == 200
    assert "You are signed out" in done.text
    assert (await prompt_none(rp, browser))["error"] == "login_required"
    assert len(receiver.posts) == 1
    await assert_logout_token(hub, rp, receiver.posts[0]["form"]["logout_token"], id_claims["sid"], id_claims["sub"])


async def test_logout_without_hint_and_without_session_just_says_signed_out(hub: Hub, browser: Browser) -> None:
    page = await browser.go("/end-session")
    assert page.status_code == 200
    assert "You are signed out" in page.text


async def test_hub_sign_out_sends_back_channel_logout(
    hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver
) -> None:
    token, kept = await sign_in_through(rp, browser)
    id_claims = await rp.validate_id_token(token, kept["nonce"])
    page = await browser.go("/account")
    done = await browser.submit(page, "/sign-out")
    assert done.status_code == 200
    assert "You are signed out" in done.text
    assert len(receiver.posts) == 1
    await assert_logout_token(hub, rp, receiver.posts[0]["form"]["logout_token"], id_claims["sid"], id_claims["sub"])
    async with hub.app[DB]() as db:
        (session,) = (await db.scalars(select(BrowserSession))).all()
    assert session.sid == id_claims["sid"]
    assert session.ended_at is not None


async def test_only_services_of_the_session_are_notified(hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver) -> None:
    # A second service with a back-channel URI that this session never used.
    await hub.add_service(name="Forum", redirect_uris=["http://127.0.0.1:9/forum"], backchannel_logout_uri=receiver.url + "?forum")
    token, _ = await sign_in_through(rp, browser)
    page = await browser.go("/account")
    await browser.submit(page, "/sign-out")
    assert len(receiver.posts) == 1
    _, claims = await decode(hub, receiver.posts[0]["form"]["logout_token"])
    assert claims["aud"] == rp.client_id


async def test_unreachable_back_channel_does_not_block_logout(hub: Hub, browser: Browser) -> None:
    dead = f"http://127.0.0.1:{free_port()}/gone"
    service = await hub.add_service(post_logout_redirect_uris=[LOGGED_OUT], backchannel_logout_uri=dead)
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    token, _ = await sign_in_through(rp, browser)
    query = urlencode({"id_token_hint": token["id_token"], "post_logout_redirect_uri": LOGGED_OUT})
    response = await browser.http.get(f"/end-session?{query}")
    assert response.status_code == 302
    assert response.headers["location"] == LOGGED_OUT
    assert (await prompt_none(rp, browser))["error"] == "login_required"


async def test_es256_service_gets_an_es256_logout_token(hub: Hub, browser: Browser, receiver: Receiver) -> None:
    service = await hub.add_service(id_token_alg="ES256", backchannel_logout_uri=receiver.url)
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    token, kept = await sign_in_through(rp, browser)
    id_claims = await rp.validate_id_token(token, kept["nonce"])
    page = await browser.go("/account")
    await browser.submit(page, "/sign-out")
    (post,) = receiver.posts
    header, _ = await decode(hub, post["form"]["logout_token"])
    assert header["alg"] == "ES256"
    await assert_logout_token(hub, rp, post["form"]["logout_token"], id_claims["sid"], id_claims["sub"])


async def test_session_replaced_by_another_sign_in_notifies_its_services(
    hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver
) -> None:
    await hub.add_user("bob@example.com", given_name="Bob")
    token, kept = await sign_in_through(rp, browser)
    ann = await rp.validate_id_token(token, kept["nonce"])
    await browser.sign_in("bob@example.com")
    async with hub.app[DB]() as db:
        ended = await db.scalar(select(BrowserSession).where(BrowserSession.sid == ann["sid"]))
    assert ended is not None and ended.ended_at is not None
    assert len(receiver.posts) == 1
    await assert_logout_token(hub, rp, receiver.posts[0]["form"]["logout_token"], ann["sid"], ann["sub"])


async def test_password_change_signs_out_other_browsers_and_tells_their_services(
    hub: Hub, rp: RelyingParty, browser: Browser, receiver: Receiver
) -> None:
    other = Browser(hub)
    try:
        token, kept = await sign_in_through(rp, other)
        elsewhere = await rp.validate_id_token(token, kept["nonce"])
        await browser.sign_in()
        page = await browser.go("/account/password")
        done = await browser.submit(
            page, "/account/password", current_password=PASSWORD, password="a brand new passphrase for ann"
        )
        assert "Password changed" in done.text
        (post,) = receiver.posts
        await assert_logout_token(hub, rp, post["form"]["logout_token"], elsewhere["sid"], elsewhere["sub"])
        assert (await other.go("/account")).url.path == "/sign-in"
        assert (await browser.go("/account")).status_code == 200
        # What the other browser's session obtained stops working too.
        assert (await hub.userinfo(token["access_token"])).status_code == 401
        refreshed = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
        assert refreshed.json()["error"] == "invalid_grant"
    finally:
        await other.aclose()
