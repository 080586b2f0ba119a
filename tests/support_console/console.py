"""Helpers for the console's page tests: a staff member's browser (the console cookie, the CSRF
cookie, the real forms), a person with a linked service, and the audit records as stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2
from sqlalchemy import select

from identity.accounts.store import find_by_sub, update_details
from identity.appkeys import DB
from identity.db.models import AuditRecord
from tests.support import Browser, Hub, RelyingParty, form, sign_in_through
from tests.support_console.helpers import COOKIE, staff_session


class Console:
    """A staff member's browser in the console: sends the console cookie, keeps the CSRF cookie,
    and submits the pages' own forms."""

    def __init__(self, hub: Hub, secret: str, sub: str) -> None:
        self.hub = hub
        self.sub = sub
        self.http = httpx2.AsyncClient(base_url=hub.url, follow_redirects=False, timeout=30)
        self.http.cookies.set(COOKIE, secret, domain="127.0.0.1", path="/support")

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get(self, path: str, **params: str) -> httpx2.Response:
        return await self.http.get(path, params=params or None)

    async def submit(self, page: httpx2.Response, action: str, follow: bool = True, **values: str) -> httpx2.Response:
        """Post the form of ``page`` whose action is ``action`` with ``values`` changed; follow a
        redirect back into the console."""
        f = form(page.text, action)
        response = await self.http.post(f.action, data=f.fields | values)
        if follow and response.status_code == 303:
            response = await self.http.get(response.headers["location"])
        return response


async def console_for(hub: Hub, role: str = "agent", email: str | None = None) -> Console:
    secret, sub = await staff_session(hub, role, email or f"{role}@example.com")  # type: ignore[arg-type]
    return Console(hub, secret, sub)


@dataclass
class Person:
    sub: str
    client_id: str
    browser: Browser


async def linked_person(hub: Hub, **service: Any) -> Person:
    """Ann, with a phone number, an address and a date of birth, signed in to "Store" (which
    links it, granting every scope but marketing)."""
    service.setdefault("cancellation_url", "https://store.example/account/close")
    added = await hub.add_service(name="Store", **service)
    sub = await hub.add_user(verified=True, birthdate="1980-04-12")
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        changes = {"phone_number": "+447700900456", "address": {"street_address": "1 High Street", "locality": "Oxford", "country": "GB"}}
        await update_details(db, account, changes, channel="person", actor=sub)
    rp = RelyingParty(hub, added.client_id, added.client_secret, scope="openid profile email phone address")
    await rp.discover()
    browser = Browser(hub)
    await sign_in_through(rp, browser)
    return Person(sub, added.client_id, browser)


async def audit_records(hub: Hub, *, account_sub: str | None = None, action: str | None = None) -> list[AuditRecord]:
    async with hub.app[DB].begin() as db:
        query = select(AuditRecord).order_by(AuditRecord.id)
        if account_sub is not None:
            query = query.where(AuditRecord.account_sub == account_sub)
        if action is not None:
            query = query.where(AuditRecord.action == action)
        return list((await db.scalars(query)).all())
