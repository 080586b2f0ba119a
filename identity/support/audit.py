"""The append-only audit trail (``audit_records``): who did what to which account, when, and why.
Every search, view, reveal and edit in the console writes one record in the same transaction as
the action, so an action is never taken without its record. Records name the account by ``sub``
and hold no other personal data (a search records the kind of query, not the text)."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import AuditRecord, utcnow

ActorKind = Literal["person", "agent", "service", "cli", "hub"]


def record(
    db: AsyncSession,
    *,
    actor_kind: ActorKind,
    actor: str | None,
    action: str,
    account_sub: str | None = None,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """Add one record to the caller's transaction."""
    row = AuditRecord(
        at=utcnow(),
        actor_kind=actor_kind,
        actor=actor,
        account_sub=account_sub,
        action=action,
        reason=reason,
        detail=detail,
    )
    db.add(row)
    return row
