"""The overdue-requests gauge, refreshed from the database (shared by every process) with the
sync gauges: one series per target, ``hub`` and each registered service, zeros included."""

from __future__ import annotations

from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncSession

from identity.rights.store import overdue_by_target


async def refresh_overdue(db: AsyncSession, gauge: Gauge) -> None:
    counts = await overdue_by_target(db)
    # Replaced in one step (no await in between): a removed service's series goes away.
    gauge.clear()
    for target, count in counts.items():
        gauge.labels(target).set(count)
