"""Member-service webhook receivers over real HTTP: each verifies every delivery with the
``standardwebhooks`` library (what a service developer would use) and keeps, per person, the
highest version it has seen, exactly as the integration guide tells services to do."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from schemas.events import service_event


def _opened(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


@dataclass
class Endpoint:
    name: str
    secret: str | None = None
    #: Every verified delivery, in arrival order.
    received: list[dict[str, Any]] = field(default_factory=list)
    #: The raw body of each of those, as signed.
    bodies: list[str] = field(default_factory=list)
    #: Per sub: the newest data (highest version) seen.
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: int = 0
    #: While set, answer with this status (and this Retry-After) instead of accepting.
    fail_with: int | None = None
    retry_after: str | None = None
    failures_answered: int = 0
    #: The type of each delivery answered with ``fail_with`` (read from its body, unverified).
    failed_types: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    #: Cleared, deliveries are held unanswered (in flight at the sender) until it is set again.
    gate: asyncio.Event = field(default_factory=lambda: _opened(asyncio.Event()))

    def version(self, sub: str) -> int:
        return self.latest.get(sub, {}).get("version", 0)

    def profile(self, sub: str) -> dict[str, Any]:
        return self.latest.get(sub, {}).get("profile", {})


class Receivers:
    """One HTTP server; each service gets its own path ``/hooks/<name>``."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._receive)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> None:
        await self.server.start_server()

    async def close(self) -> None:
        await self.server.close()

    def url(self, name: str) -> str:
        self.endpoints.setdefault(name, Endpoint(name))
        return str(self.server.make_url(f"/hooks/{name}"))

    def __getitem__(self, name: str) -> Endpoint:
        return self.endpoints[name]

    async def _receive(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints.get(request.match_info["name"])
        if endpoint is None or endpoint.secret is None:
            return web.Response(status=404)
        await endpoint.gate.wait()
        if endpoint.fail_with is not None:
            endpoint.failures_answered += 1
            try:
                endpoint.failed_types.append(str(json.loads(await request.text())["type"]))
            except (ValueError, KeyError, TypeError):
                endpoint.failed_types.append("?")
            headers = {"Retry-After": endpoint.retry_after} if endpoint.retry_after else {}
            return web.Response(status=endpoint.fail_with, headers=headers)
        body = await request.text()
        try:
            payload = Webhook(endpoint.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            endpoint.rejected += 1
            return web.Response(status=401)
        # Every delivery matches the published schema (schemas.events, served at /schemas/).
        service_event.validate_python(payload)
        async with endpoint.changed:
            endpoint.received.append(payload | {"_headers": {k.lower(): v for k, v in request.headers.items()}})
            endpoint.bodies.append(body)
            data = payload["data"]
            # Notices (link.revoked, rights.requested, ...) are events, not versioned state.
            if "version" in data and data["version"] > endpoint.version(data["sub"]):
                endpoint.latest[data["sub"]] = data
            endpoint.changed.notify_all()
        return web.Response(status=204)

    async def wait_for(self, name: str, sub: str, version: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``name`` holds ``sub`` at ``version`` or later; return that data."""
        endpoint = self.endpoints[name]

        async def reached() -> None:
            async with endpoint.changed:
                await endpoint.changed.wait_for(lambda: endpoint.version(sub) >= version)

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{name} did not reach version {version} of {sub} within {timeout} s "
                f"(has {endpoint.version(sub)}; {len(endpoint.received)} deliveries)"
            ) from None
        return endpoint.latest[sub]


    async def wait_for_event(self, name: str, type_: str, sub: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``name`` received an event of ``type_`` about ``sub``; return the first one."""
        endpoint = self.endpoints[name]

        def found() -> dict[str, Any] | None:
            return next((e for e in endpoint.received if e["type"] == type_ and e["data"]["sub"] == sub), None)

        async def arrived() -> None:
            async with endpoint.changed:
                await endpoint.changed.wait_for(lambda: found() is not None)

        try:
            await asyncio.wait_for(arrived(), timeout)
        except TimeoutError:
            raise AssertionError(f"{name} received no {type_} for {sub} within {timeout} s ({len(endpoint.received)} deliveries)") from None
        event = found()
        assert event is not None
        return event


def body_of(delivery: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in delivery.items() if k != "_headers"})
