"""Helpers for the rights-request tests: member services the person linked through the real
code flow, and the rights API called as those services do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2

from tests.support import Browser, Hub, RelyingParty, sign_in_through


@dataclass
class Linked:
    """A member service the person signed in to: its client, the person's access token for it,
    and its webhook secret when it has a webhook."""

    name: str
    rp: RelyingParty
    person_token: str
    webhook_secret: str | None = None

    @property
    def client_id(self) -> str:
        return self.rp.client_id


async def add_and_link(hub: Hub, browser: Browser, name: str, **service: Any) -> Linked:
    """Register a service and sign the (already created) person in to it, which links it."""
    added = await hub.add_service(name=name, **service)
    rp = RelyingParty(
        hub, added.client_id, added.client_secret, scope="openid profile email"
    )
    await rp.discover()
    token, _ = await sign_in_through(rp, browser)
    return Linked(name, rp, token["access_token"], added.webhook_secret)


async def service_token(rp: RelyingParty) -> str:
    response = await rp.post(
        "/token", {"grant_type": "client_credentials", "scope": "openid"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def call(
    hub: Hub,
    method: str,
    path: str,
    token: str | None,
    *,
    json: Any = None,
    **kwargs: Any,
) -> httpx2.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.request(method, path, headers=headers, json=json, **kwargs)


async def open_request(hub: Hub, person_token: str, **body: Any) -> httpx2.Response:
    return await call(
        hub, "POST", "/api/v1/me/rights-requests", person_token, json=body
    )


async def move(
    hub: Hub, token: str, request_id: str, status: str, reason: str | None = None
) -> httpx2.Response:
    body = {"status": status} | ({"reason": reason} if reason is not None else {})
    return await call(
        hub, "POST", f"/api/v1/rights-requests/{request_id}/status", token, json=body
    )
