"""A real SCIM 2.0 server for the SCIM channel's tests: ``scim2-server`` (the reference server of
the scim2 libraries, keeping Users in memory) run as a separate program, one tenant per member
service, behind a proxy that can answer in its place (a 429, a 5xx, nothing at all) and that also plays
the service's OAuth token endpoint."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
from aiohttp import web

from tests.conftest import free_port
from tests.support import answers, until

TOKEN = "scim-test-token-5b1e"
CLIENT_SECRET = "client-secret-9c2d"


class ScimServer:
    """``scim2-server`` on a free port, with ``tenants`` of their own and one bearer token."""

    def __init__(self, log: Path, tenants: tuple[str, ...]) -> None:
        self.port = free_port()
        self.log = log
        self.tenants = tenants
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "scim2_server.testserver.cli", "--port", str(self.port), "--bearer-token", TOKEN]
        for tenant in self.tenants:
            command += ["--tenant", tenant]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        until(lambda: self.process is not None and (self.process.poll() is not None or answers(f"{self.base}/{self.tenants[0]}/ServiceProviderConfig")), what="scim2-server started")
        assert self.process.poll() is None, self.log.read_text()[-2000:]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    async def users(self, tenant: str, external_id: str) -> list[dict[str, Any]]:
        """What the server stores for ``external_id`` in ``tenant``."""
        async with httpx2.AsyncClient(base_url=self.base, timeout=10) as http:
            answer = await http.get(
                f"/{tenant}/Users", params={"filter": f'externalId eq "{external_id}"'}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert answer.status_code == 200, answer.text
        return list(answer.json().get("Resources", []))

    async def user(self, tenant: str, external_id: str) -> dict[str, Any]:
        [found] = await self.users(tenant, external_id)
        return found


def scim_server(tmp: Path, tenants: tuple[str, ...]) -> Iterator[ScimServer]:
    server = ScimServer(tmp / "scim2-server.log", tenants)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class FaultyProxy:
    """Forwards to the SCIM server, unless told to answer ``status`` (with ``headers``) itself,
    or to be down (its port closed). Counts the requests it got."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.tokens_issued = 0
        self.runner: web.AppRunner | None = None
        self.port = free_port()
        self.http: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _token(self, request: web.Request) -> web.StreamResponse:
        """An OAuth token endpoint: the SCIM server's token for the client ``hub`` with the
        secret ``CLIENT_SECRET`` (client credentials grant, HTTP Basic)."""
        form = await request.post()
        expected = "Basic " + base64.b64encode(f"hub:{CLIENT_SECRET}".encode()).decode()
        if form.get("grant_type") != "client_credentials" or request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        self.tokens_issued += 1
        return web.json_response({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/token" and request.method == "POST":
            return await self._token(request)
        self.requests.append((request.method, request.path))
        if self.status is not None:
            return web.json_response({"status": str(self.status)}, status=self.status, headers=self.headers)
        assert self.http is not None
        async with self.http.request(
            request.method, self.target + request.path_qs, data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept", "if-match")},
        ) as answer:
            return web.Response(body=await answer.read(), status=answer.status, headers={"Content-Type": answer.headers.get("Content-Type", "application/scim+json")})

    async def start(self) -> None:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def close(self) -> None:
        await self.down()
        if self.http is not None:
            await self.http.close()
