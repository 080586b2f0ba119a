"""Staff made as `onesignin agents add` makes them, and the console's sign-in done over HTTP as a
browser does it: the hub's own sign-in page (password), then the TOTP code."""

from __future__ import annotations

import pyotp
from httpx2 import Response
from sqlalchemy import select

from identity.appkeys import CIPHER, DB, HASHER
from identity.db.models import Account, AuditRecord
from identity.support import staff
from tests.support import PASSWORD, Browser, Hub, form


async def add_staff(hub: Hub, email: str = "agent@example.com", role: str = "agent") -> tuple[str, pyotp.TOTP]:
    """A staff member (and their hub account); returns their sub and their authenticator."""
    async with hub.app[DB].begin() as db:
        added = await staff.add_staff(
            db, hub.settings, staff.InlinePasswords(hub.app[HASHER]), hub.app[CIPHER], email=email, password=PASSWORD, role=role, created_by="test"
        )
    totp = pyotp.parse_uri(added.totp_uri)
    assert isinstance(totp, pyotp.TOTP)
    return added.sub, totp


async def password_step(browser: Browser, email: str = "agent@example.com", password: str = PASSWORD) -> Response:
    """Start at /support/login and sign in on the hub's page; the answer after the callback."""
    page = await browser.go("/support/login")
    assert page.status_code == 200 and 'name="password"' in page.text, page.text[:500]
    return await browser.submit(page, "/i/", email=email, password=password)


async def totp_step(browser: Browser, page: Response, code: str) -> Response:
    """Send a code from the TOTP page; the raw answer (a redirect to the console on success)."""
    assert page.status_code in (200, 400) and 'action="/support/totp"' in page.text, page.text[:500]
    sent = form(page.text, "/support/totp")
    return await browser.http.post("/support/totp", data=sent.fields | {"code": code})


async def sign_in(browser: Browser, totp: pyotp.TOTP, email: str = "agent@example.com") -> Response:
    page = await password_step(browser, email)
    done = await totp_step(browser, page, totp.now())
    assert done.status_code == 303 and done.headers["location"] == "/support/", done.text[:500]
    return done


async def audit_actions(hub: Hub, actor: str) -> list[str]:
    async with hub.app[DB]() as db:
        return list((await db.scalars(select(AuditRecord.action).where(AuditRecord.actor == actor).order_by(AuditRecord.id))).all())


async def account_id(hub: Hub, sub: str) -> int:
    async with hub.app[DB]() as db:
        found = await db.scalar(select(Account.id).where(Account.sub == sub))
    assert found is not None
    return found
