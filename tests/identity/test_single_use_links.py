"""Mailed single-use links: each works once, even when used twice at the same moment, and dies
with the address or password it was mailed for."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

import httpx2
import pytest
from sqlalchemy import select, text

from identity.accounts import links
from identity.accounts.store import find_by_sub, update_details
from identity.appkeys import DB
from identity.db.models import EmailToken
from identity.mail import read_outbox
from identity.tokens import digest
from tests.support import PASSWORD, Browser, Hub, form

NEW_PASSWORD = "purple elephant dancing quietly"


def mails_to(hub: Hub, to: str) -> list[EmailMessage]:
    return [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == to]


def link_in(hub: Hub, message: EmailMessage, path: str) -> str:
    for word in message.get_content().split():
        if word.startswith(f"{hub.url}{path}?token="):
            return word[len(hub.url) :]
    raise AssertionError(f"no {path} link in:\n{message.get_content()}")


async def request_reset(hub: Hub, email: str = "ann@example.com") -> str:
    b = Browser(hub)
    try:
        page = await b.go("/reset-password")
        await b.submit(page, "/reset-password", email=email)
    finally:
        await b.aclose()
    return link_in(hub, mails_to(hub, email)[-1], "/reset-password/confirm")


async def reset_with(hub: Hub, url: str, password: str = NEW_PASSWORD) -> httpx2.Response:
    """Open a reset link and choose a password with it (the page, or the form's answer)."""
    b = Browser(hub)
    try:
        page = await b.go(url)
        if page.status_code != 200:
            return page
        return await b.submit(page, "/reset-password/confirm", password=password)
    finally:
        await b.aclose()


async def change_address(hub: Hub, browser: Browser, new: str) -> None:
    """Ask for a new sign-in address on the account page and open the link mailed to it."""
    page = await browser.go("/account")
    f = form(page.text, "/account/details")
    await browser.http.post(f.action, data=f.fields | {"email": new, "current_password": PASSWORD})
    other = Browser(hub)
    try:
        confirm = await other.go(link_in(hub, mails_to(hub, new)[-1], "/account/email/confirm"))
        done = await other.submit(confirm, "/account/email/confirm")
    finally:
        await other.aclose()
    assert done.status_code == 200, done.text


# Links die with the address or password they were mailed for -------------------------------------


async def test_a_reset_link_dies_when_the_address_changes(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    stale = await request_reset(hub)
    await browser.sign_in()
    await change_address(hub, browser, "ann.new@example.com")

    dead = await reset_with(hub, stale)
    assert dead.status_code == 400 and "This link no longer works" in dead.text
    b = Browser(hub)
    try:
        assert (await b.sign_in("ann.new@example.com")).status_code == 200  # the password is unchanged
    finally:
        await b.aclose()


async def test_links_of_the_old_address_die_whichever_channel_changes_it(hub: Hub) -> None:
    """``update_details`` is the one path of every change: the reset link and the confirmation
    link mailed to the old address stop working there, not only on the account page."""
    sub = await hub.add_user()
    stale_reset = await request_reset(hub)
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        stale_verify = await links.issue(db, account, "verify_email", account.email)
        guardian = await links.issue(db, account, "guardian_consent", "parent@example.com")
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await update_details(db, account, {"email": "ann.new@example.com"}, channel="person", actor=sub)

    assert (await reset_with(hub, stale_reset)).status_code == 400
    async with hub.app[DB]() as db:
        assert await links.find(db, stale_verify, "verify_email") is None
        assert await links.find(db, guardian, "guardian_consent") is not None  # not the address's
        assert await links.consume(db, stale_verify, "verify_email") is None


async def test_a_reset_link_dies_when_the_password_changes(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    stale = await request_reset(hub)
    await browser.sign_in()
    page = await browser.go("/account/password")
    done = await browser.submit(page, "/account/password", current_password=PASSWORD, password=NEW_PASSWORD)
    assert "Password changed" in done.text

    dead = await reset_with(hub, stale, password="another long passphrase here")
    assert dead.status_code == 400 and "This link no longer works" in dead.text
    b = Browser(hub)
    try:
        assert (await b.sign_in(password=NEW_PASSWORD)).status_code == 200
    finally:
        await b.aclose()


async def test_a_verification_link_for_an_address_no_longer_the_accounts_confirms_nothing(hub: Hub, browser: Browser) -> None:
    await hub.add_user()  # not confirmed
    await browser.sign_in()
    page = await browser.go("/account")
    await browser.go("/verify-email/resend", method="POST", data={"csrf_token": form(page.text, "/account/details").fields["csrf_token"]})
    stale = link_in(hub, mails_to(hub, "ann@example.com")[-1], "/verify-email")
    await change_address(hub, browser, "ann.new@example.com")

    b = Browser(hub)
    try:
        dead = await b.go(stale)
    finally:
        await b.aclose()
    assert dead.status_code == 400 and "This link no longer works" in dead.text


# Two uses at the same moment: exactly one succeeds ---------------------------------------------


async def _waiting_for_locks(hub: Hub, count: int) -> None:
    """Until ``count`` connections wait for a row lock (Postgres)."""
    for _ in range(600):
        async with hub.app[DB]() as db:
            waiting = await db.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
            )
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} uses never waited for the link's row")


Setup = Callable[[Hub], Awaitable[tuple[str, str]]]


async def _reset(hub: Hub) -> tuple[str, str]:
    await hub.add_user(verified=True)
    return await request_reset(hub), "Password changed"


async def _verify(hub: Hub) -> tuple[str, str]:
    sub = await hub.add_user()
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        secret = await links.issue(db, account, "verify_email", account.email)
    return f"/verify-email?token={secret}", "Address confirmed"


async def _guardian(hub: Hub) -> tuple[str, str]:
    twelve = (dt.date.today() - dt.timedelta(days=12 * 366)).isoformat()
    await hub.add_user(verified=True, birthdate=twelve, guardian_email="parent@example.com")
    return link_in(hub, mails_to(hub, "parent@example.com")[-1], "/guardian/confirm"), "Consent recorded"


async def _change(hub: Hub) -> tuple[str, str]:
    await hub.add_user(verified=True)
    b = Browser(hub)
    try:
        await b.sign_in()
        page = await b.go("/account")
        f = form(page.text, "/account/details")
        await b.http.post(f.action, data=f.fields | {"email": "ann.new@example.com", "current_password": PASSWORD})
    finally:
        await b.aclose()
    return link_in(hub, mails_to(hub, "ann.new@example.com")[-1], "/account/email/confirm"), "Address changed"


@pytest.mark.parametrize("setup", [_reset, _verify, _guardian, _change], ids=["reset", "verify", "guardian", "change_email"])
async def test_two_simultaneous_uses_of_a_link_one_succeeds(hub: Hub, setup: Setup) -> None:
    """Both uses post the link's form at once. On Postgres the test holds the link's row until
    both wait for it, so each has read the link as unused before either marks it (one
    connection per process makes SQLite take them one at a time)."""
    url, success = await setup(hub)
    path = url.split("?")[0]
    browsers = [Browser(hub), Browser(hub)]
    try:
        pages = [await b.go(url) for b in browsers]
        assert all(p.status_code == 200 for p in pages), pages[0].text
        fields = [form(p.text, path) for p in pages]
        extra = {"password": NEW_PASSWORD} if path == "/reset-password/confirm" else {}

        async def use(i: int) -> httpx2.Response:
            return await browsers[i].http.post(fields[i].action, data=fields[i].fields | extra)

        if hub.settings.database_url.startswith("postgresql"):
            async with hub.app[DB].begin() as db:
                await db.execute(select(EmailToken).where(EmailToken.token_hash.is_not(None)).with_for_update())
                uses = [asyncio.create_task(use(i)) for i in range(2)]
                await _waiting_for_locks(hub, 2)
            answers = await asyncio.gather(*uses)
        else:
            answers = await asyncio.gather(use(0), use(1))
    finally:
        for b in browsers:
            await b.aclose()
    outcomes = sorted((a.status_code, success in a.text) for a in answers)
    assert outcomes == [(200, True), (400, False)], [a.text[:500] for a in answers]
    assert all("This link no longer works" in a.text for a in answers if a.status_code == 400)
    async with hub.app[DB]() as db:
        used = await db.scalar(select(EmailToken).where(EmailToken.token_hash == digest(url.split("token=")[1])))
    assert used is not None and used.used_at is not None
