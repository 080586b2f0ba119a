"""The retention purge removes exactly what is past its period: rows just past it go, rows just
inside it stay, and children's accounts past their grace are erased (tombstone and audit)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from identity import purge
from identity.accounts import children, links
from identity.accounts.erase import erase
from identity.appkeys import DB
from identity.db.models import (
    Account,
    AccountChange,
    AuditRecord,
    Consent,
    EmailToken,
    Link,
    Notice,
    RightsRequest,
    RightsRequestEvent,
    Service,
    SignInEvent,
    StaffMember,
    Tombstone,
    utcnow,
)
from tests.cli import onesignin
from tests.support import Hub

MINUTE = dt.timedelta(minutes=1)


def days(n: int) -> dt.timedelta:
    return dt.timedelta(days=n)


async def test_purge_removes_exactly_what_is_past_retention(hub: Hub) -> None:
    s = hub.settings
    now = utcnow()
    ann = await hub.add_user(verified=True)
    restricted = await hub.add_user(email="kid@example.com", verified=True)
    waiting = await hub.add_user(email="young@example.com", verified=True)
    in_grace = await hub.add_user(email="kid2@example.com", verified=True)
    consented = await hub.add_user(email="kid3@example.com", verified=True)
    await hub.add_service()
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == ann))
        service = await db.scalar(select(Service))
        assert account is not None and service is not None

        def at(period: int, inside: bool) -> dt.datetime:
            return now - days(period) + (MINUTE if inside else -MINUTE)

        for inside in (True, False):
            tag = "in" if inside else "out"
            db.add(SignInEvent(account_id=account.id, at=at(s.sign_in_retention_days, inside), address=tag, succeeded=True))
            db.add(AccountChange(account_id=account.id, version=10, fields=[tag], channel="person", at=at(s.change_retention_days, inside)))
            db.add(AuditRecord(at=at(s.audit_retention_days, inside), actor_kind="agent", actor=tag, account_sub=ann, action="account.viewed"))
            for state in ("delivered", "dead", "pending"):
                when = at(s.notice_retention_days, inside)
                db.add(
                    Notice(
                        service_id=service.id, account_id=account.id, channel="webhook", event_type=f"{state}.{tag}",
                        message_id=str(uuid.uuid4()), key=ann, body="{}", created_at=when - days(3), state=state,
                        next_attempt_at=when, delivered_at=when if state == "delivered" else None,
                    )
                )
            # A Shared Signals event a service never polled and acknowledged (pending webhook
            # notices older still stay: they wait for their endpoint, not for a poll).
            db.add(
                Notice(
                    service_id=service.id, account_id=account.id, channel="ssf_poll", event_type=f"polled.{tag}",
                    message_id=str(uuid.uuid4()), key=ann, body="{}", created_at=at(s.ssf_poll_retention_days, inside),
                )
            )
            for closed in (True, False):
                when = at(s.rights_request_retention_days, inside)
                request = RightsRequest(
                    public_id=f"{tag}-{'closed' if closed else 'open'}", account_id=account.id, type="access", status="completed" if closed else "acknowledged",
                    opened_by="person", received_at=when - days(20), due_at=when, closed_at=when if closed else None, updated_at=when,
                )
                db.add(request)
                await db.flush()
                db.add(RightsRequestEvent(request_id=request.id, status="received", actor_kind="person", at=when))
        # Children: restricted, past delete_after; registered as a child, past the grace since;
        # restricted but still within the grace; a child whose guardian consented.
        for sub, values in (
            (restricted, {"status": "pending_guardian", "restricted_at": now - days(31), "delete_after": now - MINUTE}),
            (waiting, {"status": "pending_guardian", "created_at": now - days(s.child_grace_days) - MINUTE}),
            (in_grace, {"status": "pending_guardian", "restricted_at": now - days(1), "delete_after": now + MINUTE, "created_at": now - days(400)}),
            (consented, {"status": "active", "guardian_consent_at": now - days(400), "created_at": now - days(400)}),
        ):
            child = await db.scalar(select(Account).where(Account.sub == sub))
            assert child is not None
            for name, value in values.items():
                setattr(child, name, value)

    counts = await purge.run(hub.app[DB], s, now=now)
    assert counts == {"sign_ins": 1, "changes": 1, "notices": 3, "audit_records": 1, "rights_requests": 1, "children": 2, "unverified": 0}

    async with hub.app[DB]() as db:
        assert [e.address for e in (await db.scalars(select(SignInEvent))).all()] == ["in"]
        assert ["out"] not in [c.fields for c in (await db.scalars(select(AccountChange))).all()]
        assert ["in"] in [c.fields for c in (await db.scalars(select(AccountChange))).all()]
        kept = sorted(n.event_type for n in (await db.scalars(select(Notice))).all())
        assert kept == ["dead.in", "delivered.in", "pending.in", "pending.out", "polled.in"]
        assert sorted(r.public_id for r in (await db.scalars(select(RightsRequest))).all()) == ["in-closed", "in-open", "out-open"]
        assert len((await db.scalars(select(RightsRequestEvent))).all()) == 3
        audit = (await db.scalars(select(AuditRecord).order_by(AuditRecord.id))).all()
        assert [(a.actor, a.action) for a in audit if a.actor_kind == "agent"] == [("in", "account.viewed")]
        erased = {a.account_sub: a for a in audit if a.action == "account.erased"}
        assert set(erased) == {restricted, waiting}
        assert all((a.actor_kind, a.reason) == ("hub", "retention") for a in erased.values())
        subs = set((await db.scalars(select(Account.sub))).all())
        assert subs == {ann, in_grace, consented}
        assert {t.sub for t in (await db.scalars(select(Tombstone))).all()} == {restricted, waiting}

    # Nothing more is past its period.
    assert set((await purge.run(hub.app[DB], s, now=now)).values()) == {0}


async def test_unconfirmed_accounts_left_unused_are_erased_and_nothing_a_person_holds(hub: Hub) -> None:
    """An account whose address was never confirmed goes once the period has passed since it was
    registered and since anyone signed in to it, with no mailed link of it still live; never one
    linked to a service (whatever the link's status), that consented to one, with a rights
    request, a staff member, a child's, or one a guardian consented to."""
    s = hub.settings
    now = utcnow()
    period = days(s.unverified_retention_days)
    await hub.add_service()
    subs: dict[str, str] = {}
    for name in (
        "abandoned", "signed_in_long_ago", "inside_period", "signed_in_lately", "confirmed", "unlinked", "consented",
        "asked_rights", "staff", "child", "guardian_agreed", "live_link",
    ):
        subs[name] = await hub.add_user(email=f"{name}@example.com", verified=name == "confirmed")
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service))
        assert service is not None
        accounts = {name: await db.scalar(select(Account).where(Account.sub == sub)) for name, sub in subs.items()}
        ids = {name: a.id for name, a in accounts.items() if a is not None}
        for name, account in accounts.items():
            assert account is not None
            account.created_at = now - period - MINUTE
        accounts["inside_period"].created_at = now - period + MINUTE  # type: ignore[union-attr]
        db.add(SignInEvent(account_id=ids["signed_in_long_ago"], at=now - period - MINUTE, address="a", succeeded=True))
        db.add(SignInEvent(account_id=ids["abandoned"], at=now - MINUTE, address="a", succeeded=False))  # a failed try is no use
        db.add(SignInEvent(account_id=ids["signed_in_lately"], at=now - period + MINUTE, address="a", succeeded=True))
        db.add(Link(account_id=ids["unlinked"], service_id=service.id, status="revoked", scope="openid", ended_at=now - period * 2))
        db.add(Consent(account_id=ids["consented"], service_id=service.id, scope="openid", revoked_at=now - period * 2))
        db.add(
            RightsRequest(
                public_id="closed", account_id=ids["asked_rights"], type="access", status="completed", opened_by="person",
                received_at=now - period * 2, due_at=now - period, closed_at=now - period, updated_at=now - period,
            )
        )
        db.add(StaffMember(account_id=ids["staff"], role="agent", totp_secret="sealed", created_at=now - period * 2))
        accounts["child"].status = "pending_guardian"  # type: ignore[union-attr]
        accounts["child"].delete_after = now + MINUTE  # type: ignore[union-attr]
        accounts["guardian_agreed"].guardian_consent_at = now - period * 2  # type: ignore[union-attr]
        await links.issue(db, accounts["live_link"], "verify_email", "live_link@example.com")  # type: ignore[arg-type]
        # A link that expired, or was used, keeps nothing alive.
        await links.issue(db, accounts["abandoned"], "verify_email", "abandoned@example.com")  # type: ignore[arg-type]
        await db.execute(update(EmailToken).where(EmailToken.account_id == ids["abandoned"]).values(expires_at=now - MINUTE))

    counts = await purge.run(hub.app[DB], s, now=now)
    assert counts["unverified"] == 2 and counts["children"] == 0

    gone = {subs["abandoned"], subs["signed_in_long_ago"]}
    async with hub.app[DB]() as db:
        assert set((await db.scalars(select(Account.sub))).all()) == set(subs.values()) - gone
        assert {t.sub for t in (await db.scalars(select(Tombstone))).all()} == gone
        erased = (await db.scalars(select(AuditRecord).where(AuditRecord.action == "account.erased"))).all()
        assert {(a.account_sub, a.actor_kind, a.actor, a.reason) for a in erased} == {
            (sub, "hub", "purge", "unconfirmed_address") for sub in gone
        }
    assert (await purge.run(hub.app[DB], s, now=now))["unverified"] == 0


async def _wait_until_blocked(hub: Hub) -> None:
    """Until another connection waits for a row lock (the purge, behind our transaction)."""
    for _ in range(200):
        async with hub.app[DB]() as db:
            waiting = await db.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"))
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the purge never waited for the lock")


@pytest.mark.parametrize("race", ["guardian_consents", "another_replica_erases"])
async def test_the_child_purge_rereads_each_account_under_its_lock(hub: Hub, race: str) -> None:
    """A guardian's consent (or another replica's purge) that holds the account while the purge
    reaches it wins: the account is read again once locked and skipped, not erased, and the
    rest of the batch is still purged."""
    if hub.settings.database_url.startswith("sqlite"):
        pytest.skip("row locks: PostgreSQL only (SQLite has one writer at a time)")
    s = hub.settings
    now = utcnow()
    first = await hub.add_user(email="kid@example.com", verified=True)
    second = await hub.add_user(email="kid2@example.com", verified=True)
    async with hub.app[DB].begin() as db:
        for sub in (first, second):
            child = await db.scalar(select(Account).where(Account.sub == sub))
            assert child is not None
            child.status, child.restricted_at, child.delete_after = "pending_guardian", now - days(31), now - MINUTE

    async with hub.app[DB].begin() as db:
        # The guardian's confirmation (or another purge) holds the first account...
        account = await db.get(Account, (await db.scalar(select(Account.id).where(Account.sub == first))), with_for_update=True)
        assert account is not None
        running = asyncio.create_task(purge.run(hub.app[DB], s, now=now))
        await _wait_until_blocked(hub)
        if race == "guardian_consents":
            await children.lift(db, account, now, by_guardian=True)
        else:
            await erase(db, account, keys=None, issuer=s.issuer, actor_kind="hub", actor="purge", reason="retention", now=now, despite_links=True)
    counts = await running  # ...and the purge, which waited for it, skips that account
    assert counts["children"] == 1

    async with hub.app[DB]() as db:
        left = set((await db.scalars(select(Account.sub))).all())
        tombstones = {t.sub for t in (await db.scalars(select(Tombstone))).all()}
    if race == "guardian_consents":
        assert left == {first} and tombstones == {second}
    else:
        assert left == set() and tombstones == {first, second}


@pytest.mark.e2e
def test_purge_command_prints_the_counts(database_url: str, tmp_path: Path) -> None:
    env = os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": "c" * 40,
    }
    done = onesignin(env, "purge")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"purged": {kind: 0 for kind in purge.KINDS}}
    helped = onesignin(env, "purge", "--help")
    assert helped.returncode == 0 and "ONESIGNIN_SIGN_IN_RETENTION_DAYS" in helped.stdout


@pytest.mark.parametrize("settings_overrides", [{"purge_interval": 0.2}])
async def test_the_hub_purges_every_purge_interval(hub: Hub) -> None:
    sub = await hub.add_user(verified=True)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        old = utcnow() - days(hub.settings.sign_in_retention_days) - MINUTE
        db.add(SignInEvent(account_id=account.id, at=old, address="old", succeeded=True))
        db.add(SignInEvent(account_id=account.id, at=utcnow(), address="new", succeeded=True))
    for _ in range(100):
        async with hub.app[DB]() as db:
            left = (await db.scalars(select(SignInEvent.address))).all()
        if left == ["new"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not purged: {left}")
