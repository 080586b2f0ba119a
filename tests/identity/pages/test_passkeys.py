"""Passkeys over plain HTTP (the browser ceremonies are in ``test_passkeys_browser.py``):
removing one needs the password once the sign-in is no longer recent, and only one's own; a
hub whose issuer is an IP address offers no passkeys, and a passkey kept from before does not
block a password sign-in there."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os

import pytest

from sqlalchemy import select, update

from identity.appkeys import DB
from identity.db.models import Account, AuditRecord, BrowserSession, Passkey, utcnow
from identity.mail import read_outbox
from tests.cli import onesignin
from tests.support import PASSWORD, Browser, Hub, form


async def passkey_for(hub: Hub, email: str, name: str = "Phone") -> int:
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.email == email))
        assert account is not None
        key = Passkey(account_id=account.id, credential_id=f"id-{email}", user_handle="aGFuZGxl", public_key="cGs", sign_count=0, transports=[], name=name, created_at=utcnow())
        db.add(key)
        await db.flush()
        return key.id


async def test_removing_a_passkey_needs_the_password_after_a_while_and_only_ones_own(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await hub.add_user("bob@example.com", verified=True)
    mine = await passkey_for(hub, "ann@example.com")
    bobs = await passkey_for(hub, "bob@example.com")
    await browser.sign_in()
    assert (await browser.go(f"/account/passkeys/{bobs}/remove")).status_code == 404
    async with hub.app[DB].begin() as db:
        await db.execute(update(BrowserSession).values(auth_time=utcnow() - dt.timedelta(minutes=20)))

    page = await browser.go(f"/account/passkeys/{mine}/remove")
    assert page.status_code == 200 and 'Remove the passkey "Phone"?' in page.text and 'name="current_password"' in page.text
    wrong = await browser.submit(page, f"/account/passkeys/{mine}/remove", current_password="not the password")
    assert wrong.status_code == 400 and "Your password is not correct." in wrong.text
    refused = await browser.http.post(f"/account/passkeys/{bobs}/remove", data=form(page.text, f"/account/passkeys/{mine}/remove").fields | {"current_password": PASSWORD})
    assert refused.status_code == 404
    done = await browser.submit(page, f"/account/passkeys/{mine}/remove", current_password=PASSWORD)
    assert done.status_code == 200 and "The passkey is removed" in done.text and "You have no passkeys yet." in done.text

    async with hub.app[DB].begin() as db:
        assert [k.name for k in await db.scalars(select(Passkey))] == ["Phone"]  # Bob's
        actions = (await db.scalars(select(AuditRecord.action).where(AuditRecord.action.like("account.passkey%")))).all()
        assert actions == ["account.passkey_removed"]
    mails = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["Subject"] == "A passkey was removed"]
    assert len(mails) == 1 and mails[0]["To"] == "ann@example.com" and '"Phone"' in mails[0].get_content()


async def test_an_issuer_on_an_ip_address_offers_no_passkeys(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await passkey_for(hub, "ann@example.com")
    page = await browser.go("/sign-in")
    assert "passkey" not in page.text.lower() and 'autocomplete="username"' in page.text
    assert "osi_passkey" not in page.headers.get("set-cookie", "")
    # The passkey cannot be used here, so it does not stand between the password and the account.
    signed_in = await browser.sign_in()
    assert signed_in.status_code == 200 and signed_in.url.path == "/account"
    account = signed_in
    assert "Passkeys are not available at this address of One Sign In" in account.text and "data-passkey" not in account.text


@pytest.mark.e2e
async def test_an_operator_removes_the_passkeys_of_someone_who_lost_them(localhost_hub: Hub) -> None:
    """A passkey asks for itself after the password; ``users remove-second-factor`` removes the
    passkeys too (audited), and the password alone signs in again."""
    hub = localhost_hub
    await hub.add_user(verified=True)
    await passkey_for(hub, "ann@example.com")
    browser = Browser(hub)
    try:
        asked = await browser.sign_in()
        assert asked.url.path == "/sign-in/code" and "Use your passkey" in asked.text and 'name="code"' not in asked.text
        async with hub.app[DB]() as db:
            sub = await db.scalar(select(Account.sub))
        env = os.environ | {"ONESIGNIN_DATA_DIR": str(hub.settings.data_dir), "ONESIGNIN_DATABASE_URL": hub.settings.database_url, "ONESIGNIN_SECRET_KEY": "c" * 40}
        done = await asyncio.to_thread(onesignin, env, "users", "remove-second-factor", "--sub", sub, "--operator", "ops@example.com")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"sub": sub, "second_factor": "removed", "authenticator_app": False, "passkeys_removed": 1}
        fresh = Browser(hub)
        try:
            signed_in = await fresh.sign_in()
            assert signed_in.url.path == "/account"
        finally:
            await fresh.aclose()
        async with hub.app[DB]() as db:
            record = await db.scalar(select(AuditRecord).where(AuditRecord.action == "account.second_factor_removed"))
            assert record is not None and record.detail == {"authenticator_app": False, "passkeys": 1}
            assert await db.scalar(select(Passkey.id)) is None
    finally:
        await browser.aclose()


GARBAGE = [
    "",
    "not json",
    "[]",
    "{}",
    '{"id": 5}',
    '{"id": "abc", "rawId": "abc", "type": "public-key", "response": {}}',
    '{"id": "abc", "rawId": "abc", "type": "public-key", "response": {"clientDataJSON": "!!", "authenticatorData": "", "signature": ""}}',
]


async def test_a_malformed_answer_is_refused_plainly(localhost_hub: Hub) -> None:
    """Whatever the browser posts as its passkey's answer, the person is told to try again (400),
    no session starts, and the hub does not fail."""
    hub = localhost_hub
    await hub.add_user(verified=True)
    await passkey_for(hub, "ann@example.com")
    browser = Browser(hub)
    try:
        for credential in GARBAGE:
            page = await browser.go("/sign-in")
            posted = await browser.http.post("/sign-in/passkey", data=form(page.text, "/sign-in/passkey").fields | {"credential": credential})
            assert posted.status_code == 400, (credential, posted.text[:300])
            assert "osi_session" not in posted.headers.get("set-cookie", "")
            assert "Try again" in posted.text or "not known here" in posted.text, credential
        # Known id, nonsense inside: checked and refused, not a crash.
        page = await browser.go("/sign-in")
        forged = '{"id": "id-ann@example.com", "rawId": "id-ann@example.com", "type": "public-key", "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA", "userHandle": "aGFuZGxl"}}'
        posted = await browser.http.post("/sign-in/passkey", data=form(page.text, "/sign-in/passkey").fields | {"credential": forged})
        assert posted.status_code == 400 and "could not be checked" in posted.text
    finally:
        await browser.aclose()
