"""Pushed Authorization Requests (RFC 9126): the service pushes its request to ``/par``,
authenticated as at the token endpoint, and the browser carries only the ``request_uri``; a
service registered with ``require_par`` may not send a request any other way."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc.jwk import ECKey
from sqlalchemy import update

from identity.appkeys import DB
from identity.db.models import PushedRequest, utcnow
from tests.identity.oauth.test_authorize import authorize_url, is_error_page
from tests.support import SQLITE_ALONE, PASSWORD, Browser, Hub, RelyingParty, form, query_params

pytestmark = SQLITE_ALONE


async def push(rp: RelyingParty, *, auth: str | None = "client_secret_basic", omit: tuple[str, ...] = (), **params: str) -> tuple[httpx2.Response, dict[str, str]]:
    """Push a whole authorization request; returns the answer and what the RP keeps."""
    url, kept = authorize_url(rp, omit=omit, **params)
    return await rp.post("/par", query_params(url), auth=auth), kept


def front_url(rp: RelyingParty, request_uri: str, **extra: str) -> str:
    return f"{rp.hub.url}/authorize?{urlencode({'client_id': rp.client_id, 'request_uri': request_uri} | extra)}"


async def through(browser: Browser, url: str) -> httpx2.Response:
    """The person signs in and consents when asked; the last answer (a redirect to the service)."""
    page = await browser.go(url)
    if page.status_code == 200 and 'name="password"' in page.text:
        page = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    if page.status_code == 200 and "/consent" in page.text:
        f = form(page.text, "/i/")
        page = await browser.go(f.action, method="POST", data=f.fields | {"decision": "allow"})
    return page


async def test_a_pushed_request_completes_the_code_flow(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    answer, kept = await push(rp)
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["request_uri"].startswith("urn:ietf:params:oauth:request_uri:") and body["expires_in"] == 60

    # Parameters sent beside request_uri are ignored: only the pushed ones count (section 4).
    page = await through(browser, front_url(rp, body["request_uri"], state="tampered", scope="openid"))
    assert page.status_code == 302, page.text[:1000]
    callback = page.headers["location"]
    assert callback.startswith(rp.redirect_uri) and query_params(callback)["state"] == kept["state"]
    token = (await rp.exchange(callback, kept)).json()
    assert "refresh_token" in token  # the pushed scope (with offline_access), not the one beside it

    # Used once.
    again = await browser.go(front_url(rp, body["request_uri"]))
    assert is_error_page(again, "invalid_request_uri"), again.text[:500]


async def test_a_request_uri_serves_only_its_service(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    other = await hub.add_service(name="Other")
    answer, _ = await push(rp)
    stolen = await browser.go(front_url(RelyingParty(hub, other.client_id, other.client_secret), answer.json()["request_uri"]))
    assert is_error_page(stolen, "invalid_request_uri")
    page = await through(browser, front_url(rp, answer.json()["request_uri"]))
    assert page.status_code == 302  # still there for its own service


async def test_an_expired_or_unknown_request_uri_is_refused(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    answer, _ = await push(rp)
    async with hub.app[DB].begin() as db:
        await db.execute(update(PushedRequest).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert is_error_page(await browser.go(front_url(rp, answer.json()["request_uri"])), "invalid_request_uri")
    made_up = "urn:ietf:params:oauth:request_uri:made-up"
    assert is_error_page(await browser.go(front_url(rp, made_up)), "invalid_request_uri")


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"redirect_uri": "https://evil.example/cb"}, 400, "invalid_request"),
        ({"omit": ("code_challenge",)}, 400, "invalid_request"),
        ({"response_type": "token"}, 400, "unsupported_response_type"),
        ({"request_uri": "urn:ietf:params:oauth:request_uri:x"}, 400, "invalid_request"),  # section 2.1
        ({"request": "eyJ..."}, 400, "request_not_supported"),
        ({"client_id": "someone-else"}, 400, "invalid_request"),
        ({"auth": None}, 401, "invalid_client"),
    ],
)
async def test_bad_pushed_requests_are_answered_as_json(hub: Hub, rp: RelyingParty, change: dict[str, Any], status: int, error: str) -> None:
    answer, _ = await push(rp, **change)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert "location" not in answer.headers
    async with hub.app[DB]() as db:
        assert (await db.scalars(PushedRequest.__table__.select())).first() is None


async def test_a_public_client_pushes_with_its_client_id(hub: Hub, browser: Browser) -> None:
    app = await hub.add_service(name="App", token_endpoint_auth_method="none", application_type="native", redirect_uris=["http://127.0.0.1/cb"])
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, app.client_id, None, redirect_uri="http://127.0.0.1:40123/cb")
    answer, kept = await push(rp, auth="none")
    assert answer.status_code == 201, answer.text
    page = await through(browser, front_url(rp, answer.json()["request_uri"]))
    assert page.headers["location"].startswith("http://127.0.0.1:40123/cb?code=")
    assert (await rp.exchange(page.headers["location"], kept, auth="none")).status_code == 200


async def test_a_private_key_jwt_service_pushes_with_an_assertion(hub: Hub) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k"})
    created = await hub.add_service(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]})
    rp = RelyingParty(hub, created.client_id, None)
    url, _ = authorize_url(rp)
    assertion = private_key_jwt_sign(key, client_id=rp.client_id, token_endpoint=hub.url, alg="ES256", expires_in=60)
    body = query_params(url) | {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    async with httpx2.AsyncClient(base_url=hub.url) as http:
        answer = await http.post("/par", data=body)
    assert answer.status_code == 201, answer.text


async def test_a_service_that_must_push_cannot_send_its_request_through_the_browser(hub: Hub, browser: Browser) -> None:
    created = await hub.add_service(require_par=True)
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, created.client_id, created.client_secret)
    url, _ = authorize_url(rp)
    page = await browser.go(url)
    assert is_error_page(page, "invalid_request") and "must push" in page.text
    answer, kept = await push(rp)
    page = await through(browser, front_url(rp, answer.json()["request_uri"]))
    assert page.status_code == 302 and "code=" in page.headers["location"]


async def test_discovery_names_the_endpoint(hub: Hub) -> None:
    async with httpx2.AsyncClient() as http:
        metadata = (await http.get(f"{hub.url}/.well-known/openid-configuration")).json()
    assert metadata["pushed_authorization_request_endpoint"] == f"{hub.url}/par"
    assert metadata["require_pushed_authorization_requests"] is False
