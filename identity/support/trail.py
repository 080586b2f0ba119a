"""Reading the audit trail back: for supervisors in the console, and ``onesignin audit list``.
Read-only; takes the caller's session."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Account, AuditRecord


async def records(
    db: AsyncSession,
    *,
    account_sub: str | None = None,
    before: int | None = None,
    limit: int | None = 50,
    newest_first: bool = True,
) -> list[AuditRecord]:
    """Records, optionally of one account; ``before`` (a record id) pages back in time."""
    query = select(AuditRecord)
    if account_sub is not None:
        query = query.where(AuditRecord.account_sub == account_sub)
    if before is not None:
        query = query.where(AuditRecord.id < before)
    order = (AuditRecord.id.desc(),) if newest_first else (AuditRecord.id,)
    query = query.order_by(*order)
    if limit is not None:
        query = query.limit(limit)
    return list((await db.scalars(query)).all())


async def of_service(db: AsyncSession, client_id: str) -> list[AuditRecord]:
    """The operators' records about one service (``service.*``, naming it in their detail),
    oldest first; they outlive the service."""
    rows = (await db.scalars(select(AuditRecord).where(AuditRecord.action.like("service.%")).order_by(AuditRecord.id))).all()
    return [r for r in rows if isinstance(r.detail, dict) and r.detail.get("client_id") == client_id]


async def agent_emails(db: AsyncSession, rows: list[AuditRecord]) -> dict[str, str]:
    """The email address of each agent named in ``rows`` (by ``sub``), for supervisors' pages."""
    subs = {r.actor for r in rows if r.actor_kind == "agent" and r.actor}
    if not subs:
        return {}
    return {sub: email for sub, email in await db.execute(select(Account.sub, Account.email).where(Account.sub.in_(subs)))}


def as_json(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": record.at.isoformat().replace("+00:00", "Z"),
        "actor_kind": record.actor_kind,
        "actor": record.actor,
        "account_sub": record.account_sub,
        "action": record.action,
        "reason": record.reason,
        "detail": record.detail,
    }
