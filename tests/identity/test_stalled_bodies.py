"""A client that sends a request's headers and part of its body, then waits, holds nothing that
anyone else needs: every handler gets the whole body before it opens a unit of work, and a body
that does not arrive in time is answered 408.

Each stalled request asks ``Expect: 100-continue``: the hub answers ``100 Continue`` only once it
has parsed the headers and handed the request to the application, so the test knows every stall
has reached the hub before it checks that database-backed requests still answer."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from tests.support import Browser, Hub, RelyingParty, sign_in_through

#: Connections the hub keeps to Postgres here (SQLite has one): every route is stalled more
#: times than that, so a single route that held a connection while waiting would starve the rest.
POOL = 2
STALLS_PER_ROUTE = POOL + 1


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"database_pool_size": POOL, "request_body_timeout": 120}


def body_routes(app: web.Application, prefix: str = "") -> list[tuple[str, str]]:
    """Every (method, path) that takes a body, sub-applications included, with each path
    parameter filled in."""
    found = []
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if isinstance(sub, web.Application):
            found += body_routes(sub, prefix + resource.get_info()["prefix"])
            continue
        info = resource.get_info()
        template = info.get("path") or info.get("formatter") or ""
        path = prefix + re.sub(r"\{[^}]+\}", "x", template)
        for route in resource:
            if route.method in ("POST", "PATCH", "PUT", "DELETE"):
                found.append((route.method, path))
    return found


class Stall:
    """One request whose body never finishes arriving."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, hub: Hub, method: str, path: str, content_type: str) -> Stall:
        parts = urlsplit(hub.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: 4000\r\nExpect: 100-continue\r\nAuthorization: Bearer x\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 100"), (method, path, status)
        await reader.readline()  # the blank line ending the interim response
        writer.write(b'{"type": "access", "deta' if content_type == "application/json" else b"email=ann%40exa")
        await writer.drain()
        return cls(reader, writer)

    def still_waiting(self) -> bool:
        """Nothing answered and the connection open: the hub is still reading the body."""
        return not self.reader.at_eof() and not self.reader._buffer  # type: ignore[attr-defined]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def test_stalled_bodies_on_every_route_leave_the_database_to_everyone(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    token, _ = await sign_in_through(rp, browser)
    other = Browser(hub)
    try:
        # Opened only now: the person above got their token before anything stalled.
        async with _stalled(hub) as held:
            userinfo = asyncio.ensure_future(hub.userinfo(token["access_token"]))
            signing_in = asyncio.ensure_future(other.sign_in())
            done, _ = await asyncio.wait([userinfo, signing_in], timeout=60)
            assert userinfo in done and signing_in in done, "a database-backed request waited on a stalled body"
            assert userinfo.result().status_code == 200
            signed_in = signing_in.result()
            assert signed_in.status_code == 200 and signed_in.url.path == "/account", signed_in.text[:500]
            assert all(s.still_waiting() for s in held), "a stalled request was answered: the test proves nothing"
    finally:
        await other.aclose()


class _stalled:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.held: list[Stall] = []

    async def __aenter__(self) -> list[Stall]:
        for method, path in body_routes(self.hub.app):
            for content_type in ("application/x-www-form-urlencoded", "application/json"):
                for _ in range(STALLS_PER_ROUTE):
                    self.held.append(await Stall.open(self.hub, method, path, content_type))
        return self.held

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(s.close() for s in self.held))


@pytest.mark.parametrize("settings_overrides", [{"request_body_timeout": 0.5}])
async def test_a_body_that_does_not_arrive_in_time_is_answered_408(hub: Hub) -> None:
    page = await Stall.open(hub, "POST", "/sign-in", "application/x-www-form-urlencoded")
    api = await Stall.open(hub, "POST", "/api/v1/me/rights-requests", "application/json")
    try:
        page_status = await page.reader.readline()
        api_status = await api.reader.readline()
        assert page_status.startswith(b"HTTP/1.1 408"), page_status
        assert api_status.startswith(b"HTTP/1.1 408"), api_status
        # The answer's body, read by its length (the hub may linger a while before it closes).
        head = await api.reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
        rest = await api.reader.readexactly(length)
        assert b'"error": "request_timeout"' in rest
    finally:
        await page.close()
        await api.close()


async def test_multipart_bodies_are_refused(hub: Hub) -> None:
    browser = Browser(hub)
    try:
        answer = await browser.http.post("/sign-in", files={"email": (None, "ann@example.com")})
        assert answer.status_code == 415
        api = await browser.http.post("/api/v1/me/rights-requests", files={"type": (None, "access")})
        assert api.status_code == 415
        assert api.json()["error"] == "unsupported_media_type"
    finally:
        await browser.aclose()
