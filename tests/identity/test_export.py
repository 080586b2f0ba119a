"""The access and portability export: complete against its documented schema (every table that
holds rows about the person has its section, and each is filled), never a secret, served to the
signed-in person as a download and to an app of theirs holding the dedicated ``export`` scope."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx2
import jsonschema
from sqlalchemy import select

from identity import notices
from identity.appkeys import CIPHER, DB
from identity.db.models import (
    Account,
    AuditRecord,
    AuthorizationCode,
    Base,
    BrowserSession,
    ConsoleSession,
    DeadLetter,
    Delivery,
    EmailToken,
    RightsRequest,
    RightsRequestEvent,
    Service,
    SecondFactor,
    SecondFactorRemoval,
    Passkey,
    StaffMember,
    StaffService,
    Token,
    utcnow,
)
from identity.accounts.second_factor import seal_totp as seal_person_totp
from identity.support.staff import seal_totp
from schemas.events import LinkCreated, LinkRevoked, LinkRevokedData
from schemas.export import AccountExport
from sync import fanout
from tests.support import Browser, Hub, RelyingParty, form, sign_in_through

TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PERSON_TOTP = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"

#: Where each table holding rows about a person appears in the export.
SECTIONS = {
    "accounts": "account",
    "account_changes": "changes",
    "sign_in_events": "sign_ins",
    "email_tokens": "mailed_links",
    "consents": "consents",
    "links": "links",
    "browser_sessions": "sessions",
    "session_services": "sessions",
    "authorization_codes": "authorization_codes",
    "tokens": "grants",
    "deliveries": "deliveries",
    "dead_letters": "dead_letters",
    "notices": "notices",
    "rights_requests": "rights_requests",
    "rights_request_events": "rights_requests",
    "audit_records": "audit",
    "staff": "staff",
    "console_sessions": "staff",
    "staff_services": "staff",
    "second_factors": "second_factor",
    "passkeys": "passkeys",
    "second_factor_removals": "second_factor_removals",
}


def tables_about_a_person() -> set[str]:
    """Tables whose rows belong to one account: by foreign key to ``accounts`` (directly or
    through another such table), or naming it by ``account_sub``."""
    found = {"accounts"}
    grew = True
    while grew:
        grew = False
        for table in Base.metadata.sorted_tables:
            if table.name in found:
                continue
            if "account_sub" in table.c or any(fk.column.table.name in found for fk in table.foreign_keys):
                found.add(table.name)
                grew = True
    return found


def test_every_table_about_a_person_has_its_section() -> None:
    assert tables_about_a_person() == set(SECTIONS)
    assert set(SECTIONS.values()) <= set(AccountExport.model_fields)


async def _populate(hub: Hub, browser: Browser) -> tuple[str, dict[str, Any], RelyingParty]:
    """Ann, with a row in every table that can hold one about her."""
    service = await hub.add_service(webhook_url="https://store.example/hooks")
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    await browser.sign_in()
    token, _ = await sign_in_through(rp, browser)
    page = await browser.go("/account")
    details = form(page.text, "/account/details")
    await browser.http.post(details.action, data=details.fields | {"given_name": "Anna", "marketing_news": "on"})
    reset = await browser.go("/reset-password")
    await browser.submit(reset, "/reset-password", email="ann@example.com")
    now = utcnow()
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.email == "ann@example.com"))
        store = await db.scalar(select(Service).where(Service.client_id == service.client_id))
        assert account is not None and store is not None
        # What the fan-out records for her link (a delivery), and what gave up once.
        await fanout.record(
            db, [LinkCreated(id=str(uuid.uuid4()), sub=account.sub, client_id=store.client_id, version=account.version, occurred_at=now)], echo_suppression=True
        )
        delivery = await db.scalar(select(Delivery).where(Delivery.account_id == account.id))
        assert delivery is not None
        db.add(DeadLetter(delivery_id=delivery.id, service_id=store.id, account_id=account.id, channel="webhook", version=1, attempts=9, gave_up_at=now))
        notices.add(db, store, account.id, account.sub, LinkRevoked(id=str(uuid.uuid4()), timestamp=now, data=LinkRevokedData(sub=account.sub, revoked_at=now)))
        request = RightsRequest(
            public_id=str(uuid.uuid4()), account_id=account.id, service_id=store.id, type="access", details="all of it",
            opened_by="person", received_at=now, due_at=now + dt.timedelta(days=30), updated_at=now,
        )
        db.add(request)
        await db.flush()
        db.add(RightsRequestEvent(request_id=request.id, status="received", actor_kind="person", at=now))
        db.add(RightsRequestEvent(request_id=request.id, status="acknowledged", actor_kind="service", actor=store.client_id, at=now))
        db.add(AuditRecord(at=now, actor_kind="agent", actor="agent@example.com", account_sub=account.sub, action="account.viewed", reason="call 42"))
        db.add(AuditRecord(at=now, actor_kind="agent", actor="agent@example.com", account_sub="someone-else", action="account.viewed"))
        # She also works in support: her staff role and a console session (never its TOTP secret).
        staff = StaffMember(account_id=account.id, role="agent", totp_secret=seal_totp(hub.app[CIPHER], TOTP_SECRET, account.id), created_at=now)
        db.add(staff)
        await db.flush()
        db.add(SecondFactor(account_id=account.id, totp_secret=seal_person_totp(hub.app[CIPHER], PERSON_TOTP, account.id), recovery_codes=["d" * 64], created_at=now, confirmed_at=now))
        db.add(Passkey(account_id=account.id, credential_id="Y3JlZA", user_handle="aGFuZGxl", public_key="cGs", sign_count=3, transports=["internal"], name="Phone", created_at=now))
        db.add(SecondFactorRemoval(account_id=account.id, status="refused", reason="Caller lost the phone", requested_by="agent-sub", requested_at=now, decided_by="sup-sub", decided_at=now))
        db.add(ConsoleSession(secret_hash="c" * 64, staff_id=staff.id, stage="active", created_at=now, last_seen_at=now, expires_at=now + dt.timedelta(hours=1)))
        db.add(StaffService(staff_id=staff.id, service_id=store.id, granted_at=now, granted_by="admin-sub"))
    return account.sub, token, rp


async def _secrets(hub: Hub, sub: str) -> list[str]:
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        found = [account.password_hash]
        for model, columns in (
            (Token, ("access_hash", "refresh_hash")),
            (AuthorizationCode, ("code_hash",)),
            (EmailToken, ("token_hash",)),
            (BrowserSession, ("secret_hash", "sid")),
        ):
            for row in (await db.scalars(select(model).where(model.account_id == account.id))).all():
                found += [getattr(row, c) for c in columns if getattr(row, c)]
        for staff in (await db.scalars(select(StaffMember).where(StaffMember.account_id == account.id))).all():
            found += [staff.totp_secret, TOTP_SECRET, "c" * 64]
        for factor in (await db.scalars(select(SecondFactor).where(SecondFactor.account_id == account.id))).all():
            found += [factor.totp_secret, PERSON_TOTP, *factor.recovery_codes]
    return found


async def test_the_download_is_complete_valid_and_holds_no_secret(hub: Hub, browser: Browser) -> None:
    sub, token, _ = await _populate(hub, browser)
    response = await browser.http.get("/account/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["content-disposition"].startswith("attachment;")
    assert "no-store" in response.headers["cache-control"]

    exported = AccountExport.model_validate_json(response.text)
    schema = (await browser.http.get("/schemas/account.export.json")).json()
    jsonschema.validate(response.json(), schema)
    assert "account.export" in (await browser.http.get("/schemas/")).json()

    for section in set(SECTIONS.values()):
        assert getattr(exported, section), f"{section} is empty"
    assert exported.account.sub == sub and exported.account.given_name == "Anna"
    assert exported.marketing.news.opted_in and exported.marketing.news.changed_at is not None
    assert not exported.marketing.offers.opted_in and exported.marketing.offers.changed_at is None
    assert [link.service.name for link in exported.links] == ["Store"] and exported.links[0].status == "active"
    assert exported.consents[0].scopes == ["openid", "profile", "email", "offline_access"]
    [request] = exported.rights_requests
    assert [step.status for step in request.history] == ["received", "acknowledged"]
    assert {s.succeeded for s in exported.sign_ins} == {True}
    assert [c.fields for c in exported.changes][:1] == [["created"]]
    assert any("given_name" in c.fields and c.channel == "person" for c in exported.changes)
    assert {m.purpose for m in exported.mailed_links} == {"reset_password"}
    assert exported.sessions[0].services[0].name == "Store" and exported.sessions[0].amr == ["pwd"]
    assert exported.second_factor is not None and exported.second_factor.recovery_codes_left == 1
    assert [(k.name, k.synced, k.transports) for k in exported.passkeys] == [("Phone", False, ["internal"])]
    assert [(r.status, r.reason) for r in exported.second_factor_removals] == [("refused", "Caller lost the phone")]
    assert exported.staff is not None and [(g.service.name, g.granted_by) for g in exported.staff.looks_after] == [("Store", "admin-sub")]
    # Only the records naming her: which agent viewed the account, and why.
    assert [(a.actor, a.action, a.reason) for a in exported.audit] == [("agent@example.com", "account.viewed", "call 42")]

    for secret in [*await _secrets(hub, sub), token["access_token"], token["refresh_token"]]:
        assert secret not in response.text
    assert "password_hash" not in response.text and "argon2" not in response.text


async def test_the_export_needs_a_session(hub: Hub, browser: Browser) -> None:
    response = await browser.http.get("/account/export")
    assert response.status_code == 302
    assert response.headers["location"] == "/sign-in?next=/account/export"


async def _export(hub: Hub, access_token: str) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.get("/api/v1/me/export", headers={"Authorization": f"Bearer {access_token}"})


async def test_the_api_export_needs_the_export_scope(hub: Hub, browser: Browser) -> None:
    sub, token, _ = await _populate(hub, browser)
    # A member service with the person's ordinary token learns nothing of the other services.
    refused = await _export(hub, token["access_token"])
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    assert 'scope="export"' in refused.headers["www-authenticate"]
    assert (await _export(hub, "not-a-token")).status_code == 401

    # An app of the person's own, registered by the operator for the export scope.
    app = await hub.add_service(name="My data", scope="openid export")
    mine = RelyingParty(hub, app.client_id, app.client_secret, scope="openid export")
    await mine.discover()
    url, kept = await mine.start()
    consent = await browser.go(url)
    assert "Download a copy of everything One Sign In holds about you" in consent.text
    f = form(consent.text, "/i/")
    callback = await browser.go(f.action, method="POST", data=f.fields | {"decision": "allow"})
    granted = await mine.finish(callback.headers["location"], kept)
    answer = await _export(hub, granted["access_token"])
    assert answer.status_code == 200, answer.text
    assert "no-store" in answer.headers["cache-control"]
    exported = AccountExport.model_validate_json(answer.text)
    assert exported.account.sub == sub
    assert {link.service.name for link in exported.links} == {"Store", "My data"}


async def test_the_export_scope_is_in_no_services_default_scopes(hub: Hub) -> None:
    # The export scope is never in a service's default scopes: the operator grants it on purpose.
    default = await hub.add_service()
    async with hub.app[DB]() as db:
        scope = await db.scalar(select(Service.scope).where(Service.client_id == default.client_id))
    assert scope is not None and "export" not in scope.split()
