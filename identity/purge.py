"""The retention purge: removes what is past its configured period, and nothing else.

========================  ==========================================================  ==============================
kind                      what goes                                                   period (``ONESIGNIN_…``)
========================  ==========================================================  ==============================
``sign_ins``              sign-in history older than the period                       ``SIGN_IN_RETENTION_DAYS``
``changes``               history of changes to basic details older than the period   ``CHANGE_RETENTION_DAYS``
``notices``               service notices delivered, or given up, before the period   ``NOTICE_RETENTION_DAYS``
``audit_records``         audit records older than the period                         ``AUDIT_RETENTION_DAYS``
``rights_requests``       rights requests closed before the period (with history)     ``RIGHTS_REQUEST_RETENTION_DAYS``
``children``              children's accounts past their grace without a guardian     ``CHILD_GRACE_DAYS``
``unverified``            accounts whose address was never confirmed, unused for the  ``UNVERIFIED_RETENTION_DAYS``
                          period, holding nothing of the person's (see below)
========================  ==========================================================  ==============================

Each kind is deleted in its own transaction (:func:`run`); the functions per kind take the
caller's session. A child's account, and an unconfirmed one, is erased as any account is
(``identity.accounts.erase``: tombstone and audit record). ``onesignin purge`` runs it once; ``serve`` every
``ONESIGNIN_PURGE_INTERVAL`` seconds."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import and_, delete, exists, false, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity.accounts.erase import erase
from identity.db import dialect
from identity.db.models import (
    Account,
    AccountChange,
    AccountStatus,
    AuditRecord,
    Consent,
    EmailToken,
    Link,
    Notice,
    RightsRequest,
    SignInEvent,
    StaffMember,
    utcnow,
)
from identity.settings import Settings

Purge = Callable[[AsyncSession, Settings, dt.datetime], Awaitable[int]]


def _before(now: dt.datetime, days: int) -> dt.datetime:
    return now - dt.timedelta(days=days)


async def sign_ins(db: AsyncSession, settings: Settings, now: dt.datetime) -> int:
    cutoff = _before(now, settings.sign_in_retention_days)
    return (await db.execute(delete(SignInEvent).where(SignInEvent.at < cutoff))).rowcount or 0


async def changes(db: AsyncSession, settings: Settings, now: dt.datetime) -> int:
    cutoff = _before(now, settings.change_retention_days)
    return (await db.execute(delete(AccountChange).where(AccountChange.at < cutoff))).rowcount or 0


async def notices(db: AsyncSession, settings: Settings, now: dt.datetime) -> int:
    """Notices done with: delivered, or given up (a dead notice's last attempt is its
    ``next_attempt_at``). Pending ones stay whatever their age, but Shared Signals events a
    service never polled and acknowledged, which go after ``ssf_poll_retention_days``."""
    cutoff = _before(now, settings.notice_retention_days)
    done = or_(
        and_(Notice.state == "delivered", Notice.delivered_at < cutoff),
        and_(Notice.state == "dead", Notice.next_attempt_at < cutoff),
        and_(Notice.channel == "ssf_poll", Notice.state == "pending", Notice.created_at < _before(now, settings.ssf_poll_retention_days)),
    )
    return (await db.execute(delete(Notice).where(done))).rowcount or 0


async def audit_records(db: AsyncSession, settings: Settings, now: dt.datetime) -> int:
    """Audit records older than the period. The database refuses every other UPDATE or DELETE
    of ``audit_records`` (migration 0005): this transaction alone opens the way, and closes it
    again before it commits."""
    cutoff = _before(now, settings.audit_retention_days)
    async with _audit_purge(db):
        return (await db.execute(delete(AuditRecord).where(AuditRecord.at < cutoff))).rowcount or 0


@asynccontextmanager
async def _audit_purge(db: AsyncSession) -> AsyncIterator[None]:
    """Let this transaction delete audit records: on Postgres a transaction-local setting the
    trigger reads; on SQLite the one-row gate the trigger reads, open only inside this
    transaction (SQLite's other connections see committed rows, where it is closed)."""
    if dialect.is_postgres(db):
        await db.execute(text("SELECT set_config('onesignin.audit_purge', 'on', true)"))
        yield
        await db.execute(text("SELECT set_config('onesignin.audit_purge', 'off', true)"))
        return
    await db.execute(text("UPDATE audit_purge_gate SET open = 1 WHERE id = 1"))
    yield
    await db.execute(text("UPDATE audit_purge_gate SET open = 0 WHERE id = 1"))


async def rights_requests(db: AsyncSession, settings: Settings, now: dt.datetime) -> int:
    """Closed requests (completed or refused) once the period has passed since they closed;
    their history goes with them. Open ones stay."""
    cutoff = _before(now, settings.rights_request_retention_days)
    statement = delete(RightsRequest).where(RightsRequest.closed_at.is_not(None), RightsRequest.closed_at < cutoff)
    return (await db.execute(statement)).rowcount or 0


def _past_grace(settings: Settings, now: dt.datetime) -> list[Any]:
    return [
        Account.status == AccountStatus.PENDING_GUARDIAN,
        Account.guardian_consent_at.is_(None),
        or_(
            Account.delete_after < now,
            and_(Account.delete_after.is_(None), Account.created_at < _before(now, settings.child_grace_days)),
        ),
    ]


async def children(db: AsyncSession, settings: Settings, now: dt.datetime) -> int:
    """Children's accounts still without a guardian's consent past ``delete_after`` (set when an
    account is registered as a child's or restricted), or, without one, ``child_grace_days``
    after it was created.

    Each account is locked and read again before it is erased: a guardian who consented after
    the list was made (the consent locks the account too), or another replica's purge that
    erased it already, wins, and that account is skipped, not erased and not an error."""
    due = (await db.scalars(select(Account.id).where(*_past_grace(settings, now)).order_by(Account.id))).all()
    erased = 0
    for account_id in due:
        account = await db.scalar(
            select(Account)
            .where(Account.id == account_id, *_past_grace(settings, now))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if account is None:
            continue  # consented, erased, or otherwise changed meanwhile
        await erase(db, account, keys=None, issuer=settings.issuer, actor_kind="hub", actor="purge", reason="retention", now=now, despite_links=True)
        erased += 1
    return erased


def _unverified_and_idle(settings: Settings, now: dt.datetime) -> list[Any]:
    cutoff = _before(now, settings.unverified_retention_days)
    of_account = Account.id

    def none_of(table: Any, *more: Any) -> Any:
        return ~exists().where(table.account_id == of_account, *more)

    return [
        Account.email_verified == false(),
        Account.created_at < cutoff,
        Account.status == AccountStatus.ACTIVE,
        Account.guardian_consent_at.is_(None),
        none_of(Link),
        none_of(Consent),
        none_of(RightsRequest),
        none_of(StaffMember),
        none_of(SignInEvent, SignInEvent.succeeded.is_(True), SignInEvent.at >= cutoff),
        none_of(EmailToken, EmailToken.used_at.is_(None), EmailToken.expires_at > now),
    ]


async def unverified(db: AsyncSession, settings: Settings, now: dt.datetime) -> int:
    """Accounts whose address was never confirmed, left unused: registered more than
    ``unverified_retention_days`` ago, nobody signed in to them since then, and no mailed link
    of theirs is still live (a confirmation asked for again gets its two days). An account that
    holds anything of the person's is never one of them: one ever linked to a service or that
    consented to one (whatever the link's status now), one with a rights request (open or
    closed), a support staff member, a child's (the ``children`` kind decides those) or one a
    guardian consented to.

    Each is locked and read again before it is erased, as children's accounts are: one
    confirmed, signed in to or linked since the list was made is skipped."""
    due = (await db.scalars(select(Account.id).where(*_unverified_and_idle(settings, now)).order_by(Account.id))).all()
    erased = 0
    for account_id in due:
        account = await db.scalar(
            select(Account)
            .where(Account.id == account_id, *_unverified_and_idle(settings, now))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if account is None:
            continue
        await erase(db, account, keys=None, issuer=settings.issuer, actor_kind="hub", actor="purge", reason="unconfirmed_address", now=now)
        erased += 1
    return erased


KINDS: dict[str, Purge] = {
    "sign_ins": sign_ins,
    "changes": changes,
    "notices": notices,
    "audit_records": audit_records,
    "rights_requests": rights_requests,
    "children": children,
    "unverified": unverified,
}


async def run(sessions: async_sessionmaker[AsyncSession], settings: Settings, *, now: dt.datetime | None = None) -> dict[str, int]:
    """Purge every kind, each in its own transaction; return how many rows (accounts, for
    ``children`` and ``unverified``) each removed."""
    now = now or utcnow()
    counts = {}
    for kind, purge in KINDS.items():
        async with sessions.begin() as db:
            counts[kind] = await purge(db, settings, now)
    return counts
