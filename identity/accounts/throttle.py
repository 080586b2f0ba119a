"""Sign-in throttling, per account (by the email typed) and per client address.

For the account key every attempt is counted *before* the password is checked, in one atomic
statement, and a success clears the count: parallel guesses cannot outrun the limit. For the
address key only failures count (so many people behind one address can still sign in). After
``limit`` counted attempts inside ``window`` the key is locked; each further lockout doubles, up
to ``max_lockout``. Keys are stored as digests, so the table holds no email addresses. Counting
by the typed email, whether or not an account has it, keeps throttling from revealing which
addresses have accounts."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import and_, case, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Throttle, utcnow
from identity.db.upsert import insert_for
from identity.settings import Settings
from identity.tokens import digest


@dataclass(frozen=True)
class Keys:
    account: str
    address: str

    @classmethod
    def of(cls, email: str, address: str | None) -> Keys:
        return cls("account:" + digest(email.strip().lower()), "address:" + digest(address or "unknown"))


@dataclass(frozen=True)
class State:
    #: Seconds until sign-in may be tried again, or None when it may be tried now.
    retry_after: int | None


def seconds_until(locked_until: dt.datetime | None, now: dt.datetime | None = None) -> int | None:
    """Seconds left of a lock, or None when there is none (any more)."""
    if locked_until is None:
        return None
    if locked_until.tzinfo is None:  # a raw column read on SQLite
        locked_until = locked_until.replace(tzinfo=dt.UTC)
    now = now or utcnow()
    return math.ceil((locked_until - now).total_seconds()) if locked_until > now else None


async def state(db: AsyncSession, keys: Keys, now: dt.datetime | None = None) -> State:
    now = now or utcnow()
    rows = (await db.scalars(select(Throttle).where(Throttle.key.in_((keys.account, keys.address))))).all()
    waits = [math.ceil((r.locked_until - now).total_seconds()) for r in rows if r.locked_until and r.locked_until > now]
    return State(max(waits) if waits else None)


async def count_attempt(db: AsyncSession, keys: Keys, settings: Settings, now: dt.datetime | None = None) -> int | None:
    """Count an attempt against the account key before its password is checked. Returns the
    seconds to wait when the key is locked (and this attempt must be refused), else None."""
    now = now or utcnow()
    expired = Throttle.window_start <= now - dt.timedelta(seconds=settings.throttle_window)
    locked = and_(Throttle.locked_until.is_not(None), Throttle.locked_until > now)
    upsert = insert_for(db, Throttle).values(key=keys.account, failures=1, window_start=now, lockouts=0)
    upsert = upsert.on_conflict_do_update(
        index_elements=[Throttle.key],
        set_={
            "failures": case((locked, Throttle.failures), (expired, 1), else_=Throttle.failures + 1),
            "window_start": case((locked, Throttle.window_start), (expired, now), else_=Throttle.window_start),
        },
    ).returning(Throttle.failures, Throttle.locked_until, Throttle.lockouts)
    failures, locked_until, lockouts = (await db.execute(upsert)).one()
    if locked_until is not None and locked_until > now:
        return math.ceil((locked_until - now).total_seconds())
    if failures > settings.throttle_account_failures:
        await _lock(db, keys.account, lockouts, settings, now)
        return settings.throttle_base_lockout
    return None


async def _lock(db: AsyncSession, key: str, lockouts: int, settings: Settings, now: dt.datetime) -> None:
    lockout = min(settings.throttle_base_lockout * 2**lockouts, settings.throttle_max_lockout)
    await db.execute(
        update(Throttle)
        .where(Throttle.key == key)
        .values(locked_until=now + dt.timedelta(seconds=lockout), lockouts=Throttle.lockouts + 1, failures=0, window_start=now)
    )


async def record_failure(db: AsyncSession, keys: Keys, settings: Settings, now: dt.datetime | None = None) -> None:
    """A wrong password: the address key counts it; the account key, which counted the attempt
    already, locks once the limit is reached."""
    now = now or utcnow()
    window = dt.timedelta(seconds=settings.throttle_window)
    account = await db.get(Throttle, keys.account, with_for_update=True, populate_existing=True)
    if account is not None and account.failures >= settings.throttle_account_failures:
        lockout = min(settings.throttle_base_lockout * 2**account.lockouts, settings.throttle_max_lockout)
        account.locked_until = now + dt.timedelta(seconds=lockout)
        account.lockouts += 1
        account.failures = 0
        account.window_start = now
    for key, limit in ((keys.address, settings.throttle_address_failures),):
        await db.execute(insert_for(db, Throttle).values(key=key, failures=0, window_start=now, lockouts=0).on_conflict_do_nothing())
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


async def record_success(db: AsyncSession, keys: Keys) -> None:
    await db.execute(delete(Throttle).where(Throttle.key == keys.account))
