"""What a person consented to share with a service: remembered per (account, service), so a
later request within it asks nothing; widened by each new consent; revoked with the link
(``accounts.link_lifecycle``). Functions take the caller's session and never commit."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Consent
from identity.db.upsert import ensure_row
from identity.oidc import scopes


async def remembered(db: AsyncSession, account_id: int, service_id: int) -> set[str]:
    """The scopes the person's standing consent covers (none once revoked)."""
    consent = await db.scalar(select(Consent).where(Consent.account_id == account_id, Consent.service_id == service_id))
    return set(scopes.split(consent.scope)) if consent and consent.revoked_at is None else set()


async def grant(db: AsyncSession, account_id: int, service_id: int, requested: set[str], now: dt.datetime) -> None:
    """The person consented to ``requested``: the standing consent covers it from ``now`` on, as
    well as what it covered (unless revoked). Two tabs may consent at once: the row is created
    if missing, then widened under a lock."""
    await ensure_row(db, Consent, account_id=account_id, service_id=service_id, scope="", granted_at=now)
    consent = await db.scalar(
        select(Consent)
        .where(Consent.account_id == account_id, Consent.service_id == service_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert consent is not None
    kept = set(scopes.split(consent.scope)) if consent.revoked_at is None else set()
    consent.scope, consent.granted_at, consent.revoked_at = scopes.join(kept | requested), now, None
