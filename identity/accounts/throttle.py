"""Failed sign-in throttling, per account (by the email typed) and per client address.

After ``limit`` failures inside ``window`` the key is locked; each further lockout doubles,
up to ``max_lockout``. Keys are stored as digests, so the table holds no email addresses.
Counting by the typed email, whether or not an account has it, keeps throttling from
revealing which addresses have accounts."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Throttle, utcnow
from identity.settings import Settings
from identity.tokens import digest


@dataclass(frozen=True)
class Keys:
    account: str
    address: str

    @classmethod
    def of(cls, email: str, address: str | None) -> "Keys":
        return cls("account:" + digest(email.strip().lower()), "address:" + digest(address or "unknown"))


@dataclass(frozen=True)
class State:
    #: Seconds until sign-in may be tried again, or None when it may be tried now.
    retry_after: int | None
    #: Whether failures are on record for the account key (a success then clears them).
    account_failures: bool


async def state(db: AsyncSession, keys: Keys, now: dt.datetime | None = None) -> State:
    now = now or utcnow()
    rows = (await db.scalars(select(Throttle).where(Throttle.key.in_((keys.account, keys.address))))).all()
    waits = [math.ceil((r.locked_until - now).total_seconds()) for r in rows if r.locked_until and r.locked_until > now]
    return State(max(waits) if waits else None, any(r.key == keys.account for r in rows))


async def record_failure(db: AsyncSession, keys: Keys, settings: Settings, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    window = dt.timedelta(seconds=settings.throttle_window)
    for key, limit in ((keys.account, settings.throttle_account_failures), (keys.address, settings.throttle_address_failures)):
        await db.execute(_insert(db).values(key=key, failures=0, window_start=now, lockouts=0).on_conflict_do_nothing())
        row = await db.get(Throttle, key, with_for_update=True, populate_existing=True)
        assert row is not None
        if row.window_start + window <= now and not (row.locked_until and row.locked_until > now):
            row.failures = 0
            row.window_start = now
        row.failures += 1
        if row.failures >= limit:
            lockout = min(settings.throttle_base_lockout * 2**row.lockouts, settings.throttle_max_lockout)
            row.locked_until = now + dt.timedelta(seconds=lockout)
            row.lockouts += 1
            row.failures = 0
            row.window_start = now
    await db.flush()


def _insert(db: AsyncSession):  # type: ignore[no-untyped-def]
    if db.bind.dialect.name == "postgresql":
        return pg_insert(Throttle)
    return sqlite_insert(Throttle)


async def record_success(db: AsyncSession, keys: Keys) -> None:
    await db.execute(delete(Throttle).where(Throttle.key == keys.account))
