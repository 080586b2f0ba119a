"""The figures behind the sync metrics that are read from the database (``refresh_gauges``)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import (
    ACTIVE,
    DeadLetter,
    Delivery,
    OutboxEvent,
    Service,
    utcnow,
)
from identity.deliveries import open_dead_letter
from sync.metrics import SyncMetrics


async def refresh_gauges(db: AsyncSession, metrics: SyncMetrics) -> None:
    now = utcnow()
    pending, oldest = (
        await db.execute(select(func.count(), func.min(OutboxEvent.created_at)).where(OutboxEvent.published_at.is_(None)))
    ).one()
    metrics.outbox_pending.set(pending)
    metrics.outbox_lag.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    d = Delivery.__table__.c
    metrics.backlog.set(
        await db.scalar(select(func.count()).select_from(Delivery.__table__).where(d.state == ACTIVE, d.wanted_version > d.delivered_version))
        or 0
    )
    metrics.dead_letters.set(await db.scalar(select(func.count()).select_from(DeadLetter).where(open_dead_letter())) or 0)
    webhooks = await db.scalar(select(func.count()).select_from(Service).where(Service.webhook_quarantined_at.is_not(None)))
    scim_servers = await db.scalar(select(func.count()).select_from(Service).where(Service.scim_quarantined_at.is_not(None)))
    metrics.quarantined.set((webhooks or 0) + (scim_servers or 0))
    metrics.disabled.set(await db.scalar(select(func.count()).select_from(Service).where(Service.webhook_disabled_at.is_not(None))) or 0)
