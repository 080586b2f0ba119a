"""A stand-in for Have I Been Pwned's Pwned Passwords range API on 127.0.0.1, and its fixture.

It answers ``GET /range/{prefix}`` as the real one does (``SUFFIX:COUNT`` lines, padded with
decoys seen zero times) for the passwords a test says were breached, or misbehaves as the test
asks: hangs until released, answers garbage, an error status, a redirect, an oversized or a
compressed body. It records every request it receives."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import pytest
from aiohttp import web

Behaviour = Literal["answer", "hang", "garbage", "status", "redirect", "huge", "gzip"]
#: The size of the "huge" answer: a megabyte of valid lines, twice the most the hub reads.
HUGE = 1024 * 1024


def sha1(password: str) -> str:
    return hashlib.sha1(password.encode()).hexdigest().upper()


@dataclass(frozen=True)
class Received:
    prefix: str
    path: str
    headers: dict[str, str]


@dataclass
class RangeStandIn:
    url: str = ""
    behaviour: Behaviour = "answer"
    breached: dict[str, int] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    #: Set when a request arrives (a barrier for tests that wait on the hub waiting on the API).
    received: asyncio.Event = field(default_factory=asyncio.Event)
    #: Lets a hanging answer go on.
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def breach(self, password: str, count: int = 3) -> None:
        self.breached[sha1(password)] = count

    def answer_for(self, prefix: str) -> bytes:
        lines = [f"{secrets.token_hex(18)[:35].upper()}:0" for _ in range(800)]
        lines += [f"{digest[5:]}:{count}" for digest, count in self.breached.items() if digest.startswith(prefix)]
        lines.sort()
        return "\r\n".join(lines).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        prefix = request.match_info["prefix"]
        self.requests.append(Received(prefix, request.path_qs, dict(request.headers)))
        self.received.set()
        body = self.answer_for(prefix)
        match self.behaviour:
            case "hang":
                await self.release.wait()
                return web.Response(body=body)
            case "garbage":
                # Even a line naming the suffix does not count inside an answer that is not a list.
                known = [line for line in body.decode().split("\r\n") if not line.endswith(":0")]
                return web.Response(text="<html><body>Service Unavailable</body></html>\n" + "\n".join(known))
            case "status":
                return web.Response(status=503, body=body)
            case "redirect":
                raise web.HTTPFound("/elsewhere")
            case "huge":
                response = web.StreamResponse()
                await response.prepare(request)
                filler = b"\r\n".join(f"{secrets.token_hex(18)[:35].upper()}:0".encode() for _ in range(1000)) + b"\r\n"
                sent = 0
                while sent <= HUGE:
                    await response.write(filler)
                    sent += len(filler)
                await response.write(body)
                await response.write_eof()
                return response
            case "gzip":
                return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
        return web.Response(body=body, content_type="text/plain")


@pytest.fixture
async def pwned_range() -> AsyncIterator[RangeStandIn]:
    """The stand-in, serving at ``pwned_range.url`` (the range endpoint's base URL)."""
    stand_in = RangeStandIn()
    app = web.Application()
    app.router.add_get("/range/{prefix}", stand_in.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    stand_in.url = f"http://127.0.0.1:{sock.getsockname()[1]}/range/"
    try:
        yield stand_in
    finally:
        stand_in.release.set()
        await runner.cleanup()
