"""Erasure of the hub account: refused while a linked service still holds an account (showing
each one's cancellation route), behind the password and CSRF; then the account and every row
about the person are gone, only a tombstone and an audit record without personal data remain,
sessions and tokens are dead, and nothing stale brings the account back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from identity import notices, rights
from identity.accounts import store
from identity.accounts.store import create_account
from identity.appkeys import DB
from identity.db.models import (
    Account,
    AuditRecord,
    Link,
    Notice,
    Service,
    Tombstone,
    utcnow,
)
from schemas.events import LinkCreated, LinkRevoked, LinkRevokedData, ProfileChanged
from sync import fanout
from tests.cli import onesignin
from tests.identity.oauth import test_logout
from tests.identity.oauth.test_logout import Receiver
from tests.identity.test_export import SECTIONS
from tests.support import PASSWORD, Browser, Hub, RelyingParty, form, sign_in_through

#: A service's back-channel logout endpoint.
backchannel_receiver = test_logout.receiver


async def _linked(hub: Hub, browser: Browser) -> tuple[str, dict[str, Any], RelyingParty]:
    service = await hub.add_service(webhook_url="https://store.example/hooks")
    sub = await hub.add_user(verified=True)
    async with hub.app[DB].begin() as db:
        await db.execute(
            update(Service)
            .where(Service.client_id == service.client_id)
            .values(cancellation_url="https://store.example/close-account", cancellation_instructions="Or call 0800 000 000.")
        )
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    await browser.sign_in()
    token, _ = await sign_in_through(rp, browser)
    return sub, token, rp


async def _end_link(hub: Hub, status: str = "cancelled") -> None:
    async with hub.app[DB].begin() as db:
        await db.execute(update(Link).values(status=status, ended_at=utcnow()))


async def _delete(browser: Browser, password: str = PASSWORD) -> Any:
    page = await browser.go("/account/delete")
    f = form(page.text, "/account/delete")
    return await browser.http.post(f.action, data=f.fields | {"current_password": password})


async def _count(hub: Hub, table: str) -> int:
    async with hub.app[DB]() as db:
        return int(await db.scalar(select(func.count()).select_from(text(table))) or 0)


async def test_erasure_is_refused_while_a_link_is_active(hub: Hub, browser: Browser) -> None:
    await _linked(hub, browser)
    page = await browser.go("/account/delete")
    assert page.status_code == 200
    assert "Store" in page.text and "https://store.example/close-account" in page.text and "0800 000 000" in page.text
    assert 'action="/account/delete"' not in page.text  # no form to submit

    # Even a hand-made form is refused.
    token = form((await browser.go("/account")).text, "/account/details").fields["csrf_token"]
    forged = await browser.http.post("/account/delete", data={"csrf_token": token, "current_password": PASSWORD})
    assert forged.status_code == 409
    assert "https://store.example/close-account" in forged.text
    assert await _count(hub, "accounts") == 1
    assert await _count(hub, "tombstones") == 0


@pytest.mark.e2e
async def test_erasure_waits_for_open_requests_to_services(hub: Hub, browser: Browser) -> None:
    """Erasing the account would delete the person's requests to services with it: refused,
    listing them, while one is open; a closed one, or one to the hub, does not block."""
    sub, _, rp = await _linked(hub, browser)
    await _end_link(hub)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account))
        assert account is not None
        waiting = await rights.open_request(db, account, type="erasure", client_id=rp.client_id, details=None)
        answered = await rights.open_request(db, account, type="access", client_id=rp.client_id, details=None)
        await rights.move(db, answered, status="completed", reason=None, actor_kind="service", actor=rp.client_id)
        await rights.open_request(db, account, type="access", client_id=None, details=None)
        waiting_id, answered_id = waiting.public_id, answered.public_id

    page = await browser.go("/account/delete")
    assert page.status_code == 200
    assert "privacy requests to services that are still open" in page.text
    assert waiting_id in page.text and answered_id not in page.text and "Store" in page.text
    assert 'action="/account/delete"' not in page.text
    fields = form((await browser.go("/account")).text, "/account/details").fields
    refused = await browser.http.post("/account/delete", data={"csrf_token": fields["csrf_token"], "current_password": PASSWORD})
    assert refused.status_code == 409
    assert waiting_id in refused.text
    assert await _count(hub, "accounts") == 1 and await _count(hub, "rights_requests") == 3
    assert await _count(hub, "tombstones") == 0

    # The operators' command says the same.
    env = os.environ | {"ONESIGNIN_DATA_DIR": str(hub.settings.data_dir), "ONESIGNIN_DATABASE_URL": hub.settings.database_url, "ONESIGNIN_SECRET_KEY": "c" * 40}
    done = await asyncio.to_thread(onesignin, env, "users", "erase", "--sub", sub)
    assert done.returncode == 2, done.stderr
    assert waiting_id in done.stderr and "still open" in done.stderr and answered_id not in done.stderr
    assert await _count(hub, "accounts") == 1

    # Once the service answers, the account can go.
    async with hub.app[DB].begin() as db:
        request = await rights.for_service_one(db, waiting_id, (await db.scalar(select(Service.id))) or 0, lock=True)
        await rights.move(db, request, status="refused", reason="We must keep invoices", actor_kind="service", actor=rp.client_id)
    assert (await _delete(browser)).status_code == 200
    assert await _count(hub, "accounts") == 0


async def test_erasure_needs_the_password_and_the_csrf_token(hub: Hub, browser: Browser) -> None:
    await _linked(hub, browser)
    await _end_link(hub)
    wrong = await _delete(browser, "not my password at all")
    assert wrong.status_code == 400
    assert "Your password is not correct." in wrong.text
    no_csrf = await browser.http.post("/account/delete", data={"current_password": PASSWORD})
    assert no_csrf.status_code == 403
    assert await _count(hub, "accounts") == 1


@pytest.mark.parametrize("ended", ["cancelled", "revoked"])
async def test_erasure_leaves_only_the_tombstone(hub: Hub, browser: Browser, ended: str) -> None:
    sub, token, rp = await _linked(hub, browser)
    await _end_link(hub, ended)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account))
        service = await db.scalar(select(Service))
        assert account is not None and service is not None
        # A notice still on its way to the service (the unlink just before) is kept and delivered.
        now = utcnow()
        notices.add(db, service, account.id, sub, LinkRevoked(id=str(uuid.uuid4()), timestamp=now, data=LinkRevokedData(sub=sub, revoked_at=now)))
    before = utcnow()

    done = await _delete(browser)
    assert done.status_code == 200, done.text
    assert "Your account is deleted" in done.text
    assert 'osi_session=""' in done.headers.get("set-cookie", "")

    for table in set(SECTIONS) - {"audit_records", "notices"}:
        assert await _count(hub, table) == 0, table
    async with hub.app[DB]() as db:
        tombstone = await db.get(Tombstone, sub)
        assert tombstone is not None and tombstone.erased_at >= before
        [record] = (await db.scalars(select(AuditRecord))).all()
        assert (record.account_sub, record.action, record.actor_kind) == (sub, "account.erased", "person")
        assert record.actor is None and record.reason is None and record.detail is None
        [kept] = (await db.scalars(select(Notice))).all()
        assert kept.account_id is None and kept.state == "pending" and kept.event_type == "link.revoked"
        # Nothing personal anywhere: the email address is in no table.
        for table in ("tombstones", "audit_records", "notices", "outbox"):
            dump = " ".join(str(row) for row in (await db.execute(text(f"SELECT * FROM {table}"))).all())
            assert "ann@example.com" not in dump and "Example" not in dump, table

    # Sessions and tokens are dead.
    assert (await browser.http.get("/account")).status_code == 302
    assert (await hub.userinfo(token["access_token"])).status_code == 401
    refreshed = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert refreshed.status_code == 400
    again = await browser.sign_in()
    assert "Your account" not in again.text


async def test_nothing_stale_brings_an_erased_account_back(hub: Hub, browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    sub, _, rp = await _linked(hub, browser)
    await _end_link(hub)
    assert (await _delete(browser)).status_code == 200
    now = utcnow()
    stale = [
        ProfileChanged(id=str(uuid.uuid4()), sub=sub, version=9, changed=["given_name"], channel="support", occurred_at=now),
        LinkCreated(id=str(uuid.uuid4()), sub=sub, client_id=rp.client_id, version=9, occurred_at=now),
    ]
    async with hub.app[DB].begin() as db:
        assert await fanout.record(db, stale, echo_suppression=True) == 0
    assert await _count(hub, "deliveries") == 0

    # A new account never gets the erased sub, even if the generator offers it again.
    offered = iter([uuid.UUID(sub), uuid.UUID(sub)])
    real = uuid.uuid4
    monkeypatch.setattr(store.uuid, "uuid4", lambda: next(offered, None) or real())
    async with hub.app[DB].begin() as db:
        account = await create_account(db, email="ann@example.com", password_hash="x", details={}, channel="cli")
        assert account.sub != sub


@pytest.mark.e2e
def test_operators_erase_with_the_same_rule(database_url: str, tmp_path: Path) -> None:
    env = os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": "c" * 40,
        "ONESIGNIN_ARGON2_MEMORY_COST": "8192",
        "ONESIGNIN_ARGON2_TIME_COST": "1",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return onesignin(env, *args)

    sub = json.loads(cli("users", "add", "--email", "ann@example.com", "--password", PASSWORD).stdout)["sub"]
    assert cli("users", "erase", "--sub", "nobody").returncode == 2
    done = cli("users", "erase", "--sub", sub, "--operator", "ops@example.com", "--reason", "request 7")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"erased": sub}
    again = cli("users", "erase", "--sub", sub)
    assert again.returncode == 2 and "already erased" in again.stderr

    async def check() -> None:
        engine = create_async_engine(database_url)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(Account))).scalar() == 0
            assert (await conn.execute(select(Tombstone.sub))).scalars().all() == [sub]
            record = (await conn.execute(select(AuditRecord))).one()
            assert (record.actor_kind, record.actor, record.reason) == ("cli", "ops@example.com", "request 7")
        await engine.dispose()

    asyncio.run(check())


async def test_erasure_logs_the_sessions_out_at_services(hub: Hub, browser: Browser, backchannel_receiver: Receiver) -> None:
    receiver = backchannel_receiver
    service = await hub.add_service(backchannel_logout_uri=receiver.url)
    sub = await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    await browser.sign_in()
    await sign_in_through(rp, browser)
    await _end_link(hub, "revoked")
    assert (await _delete(browser)).status_code == 200
    [post] = receiver.posts
    claims = json.loads(base64.urlsafe_b64decode(post["form"]["logout_token"].split(".")[1] + "=="))
    assert claims["sub"] == sub and claims["aud"] == rp.client_id
