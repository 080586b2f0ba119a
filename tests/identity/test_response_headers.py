"""Every answer carries the hub's headers, a raised one too: its own name in ``Server`` (never
aiohttp's and Python's versions), no MIME sniffing, no referrer, HSTS behind https, and on pages
a CSP and no framing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from identity.appkeys import SETTINGS
from identity.settings import Settings
from identity.web.middleware import security_headers
from tests.conftest import HUB_SECRET_KEY
from tests.support import Hub

HARDENED = {"server": "OneSignIn", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


async def test_returned_and_raised_answers_of_the_hub_carry_its_headers(hub: Hub) -> None:
    service = await hub.add_service()
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        answers = {
            "page": await http.get("/sign-in"),
            # Raised, not returned, by the console's session check: web.HTTPSeeOther.
            "raised redirect": await http.get("/support/"),
            "no such page": await http.get("/nowhere"),
            "wrong method": await http.put("/sign-in"),
            "token error": await http.post("/token", data={"grant_type": "client_credentials"}, auth=(service.client_id, "wrong")),
            "discovery": await http.get("/.well-known/openid-configuration"),
        }
    assert answers["raised redirect"].status_code == 303
    for name, answer in answers.items():
        assert {k: answer.headers.get(k) for k in HARDENED} == HARDENED, name
        assert "aiohttp" not in answer.headers.get("server", "") and "Python" not in answer.headers.get("server", ""), name
    assert "default-src 'none'" in answers["page"].headers["content-security-policy"]
    assert answers["page"].headers["x-frame-options"] == "DENY"


@pytest.fixture
def https_settings() -> Iterator[Settings]:
    yield Settings(issuer="https://id.example", secret_key=HUB_SECRET_KEY, database_url="sqlite+aiosqlite:///:memory:")


async def test_behind_https_a_raised_redirect_and_a_raised_page_carry_hsts(https_settings: Settings) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    async def refused(request: web.Request) -> web.StreamResponse:
        raise web.HTTPForbidden(text="<p>No.</p>", content_type="text/html")

    app = web.Application(middlewares=[security_headers])
    app[SETTINGS] = https_settings
    app.router.add_get("/moved", moved)
    app.router.add_get("/refused", refused)
    async with TestClient(TestServer(app)) as client:
        redirect = await client.get("/moved", allow_redirects=False)
        page = await client.get("/refused")
    assert redirect.status == 302 and page.status == 403
    for answer in (redirect, page):
        assert answer.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
        assert {k: answer.headers.get(k) for k in ("Server", "X-Content-Type-Options", "Referrer-Policy")} == {
            "Server": "OneSignIn", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    assert page.headers["X-Frame-Options"] == "DENY" and "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in redirect.headers  # not a page
