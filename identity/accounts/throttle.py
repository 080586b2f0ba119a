"""Counting attempts that cost the hub or a person something: password checks (sign-in and every
confirmation of a password), and the work that registration, password resets and mailed links
set off. Every attempt is counted *before* that work is done, in one atomic statement per key, so
parallel requests cannot outrun a limit.

A key is allowed ``free`` attempts in a streak; the attempt that reaches the limit, and each one
after it, makes the next one wait, twice as long each time (``first_wait`` up to ``max_wait``):
strangers are slowed down progressively rather than locked out at once. A streak ends once no
attempt has been made for ``window`` seconds (after the last wait ran out). A sign-in's keys are
the typed email address (whether or not an account has it, so throttling reveals nothing about
who has one), the client's address (IPv6 by its /64, which one machine usually holds whole) and,
for a browser that has signed in to that account before, that browser (``identity.accounts.devices``)
instead of the other two: a stranger's guesses then slow down strangers only. A successful
sign-in clears its account or device key and gives its address back the attempt it counted, so
many people behind one address can still sign in. Keys are stored as digests: the table holds no
email or IP addresses."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, null, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db import dialect
from identity.db.models import Throttle, UTCDateTime, utcnow
from identity.settings import Settings
from identity.tokens import digest

#: Doublings before a wait reaches ``max_wait`` (2**24 times ``first_wait`` is far beyond any).
_MOST_STEPS = 24


@dataclass(frozen=True)
class Limit:
    free: int
    window: float
    first_wait: float
    max_wait: float

    def waits(self) -> tuple[float, ...]:
        """The wait after the attempt reaching the limit, after the next one, ... up to ``max_wait``."""
        found = []
        for step in range(_MOST_STEPS):
            wait = min(self.first_wait * 2**step, self.max_wait)
            found.append(wait)
            if wait >= self.max_wait:
                break
        return tuple(found)


def sign_in_limits(settings: Settings) -> tuple[Limit, Limit]:
    """The limits of a password check: per account (or known browser), and per client address."""
    account = Limit(settings.throttle_account_failures, settings.throttle_window, settings.throttle_base_lockout, settings.throttle_max_lockout)
    address = Limit(settings.throttle_address_failures, settings.throttle_window, settings.throttle_base_lockout, settings.throttle_max_lockout)
    return account, address


#: The first wait once a request or mail limit is reached (it then doubles, up to the window).
REQUEST_FIRST_WAIT = 60


def request_limits(settings: Settings) -> tuple[Limit, Limit]:
    """The limits of requests that hash a password or send mail for anyone: per client address,
    and per typed address."""
    window = settings.throttle_requests_window
    return (
        Limit(settings.throttle_requests_per_address, window, REQUEST_FIRST_WAIT, window),
        Limit(settings.throttle_requests_per_email, window, REQUEST_FIRST_WAIT, window),
    )


def mail_limit(settings: Settings) -> Limit:
    """How much mail a visitor can have the hub send to one recipient."""
    window = settings.mail_per_recipient_window
    return Limit(settings.mail_per_recipient, window, REQUEST_FIRST_WAIT, window)


def longest_window(settings: Settings) -> float:
    """After this long without attempts every streak is over (what the periodic purge keeps)."""
    return max(
        settings.throttle_window + settings.throttle_max_lockout,
        2 * settings.throttle_requests_window,
        2 * settings.mail_per_recipient_window,
    )


def address_key(kind: str, address: str | None) -> str:
    """The key of a client address: an IPv6 address by its /64 network."""
    value = address or "unknown"
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if ip.version == 6 and ip.ipv4_mapped is None:
            value = str(ipaddress.ip_network(f"{ip}/64", strict=False))
        elif ip.version == 6 and ip.ipv4_mapped is not None:
            value = str(ip.ipv4_mapped)
    return f"{kind}:" + digest(value)


def email_key(kind: str, email: str) -> str:
    return f"{kind}:" + digest(email.strip().lower())


@dataclass(frozen=True)
class Keys:
    """The keys one password check is counted against."""

    account: str
    address: str
    #: A browser that signed in to this account before: counted instead of ``account`` and ``address``.
    device: str | None = None

    @classmethod
    def of(cls, email: str, address: str | None, device: str | None = None) -> Keys:
        return cls(email_key("account", email), address_key("address", address), device)


@dataclass(frozen=True)
class Count:
    #: The attempt was refused: a wait is still running.
    refused: bool
    #: Seconds before the next attempt (before this one, when refused); None when it may come now.
    wait: int | None


def seconds_until(locked_until: dt.datetime | None, now: dt.datetime) -> int | None:
    """Seconds left of a wait, or None when there is none (any more)."""
    if locked_until is None:
        return None
    if locked_until.tzinfo is None:  # a raw column read on SQLite
        locked_until = locked_until.replace(tzinfo=dt.UTC)
    return math.ceil((locked_until - now).total_seconds()) if locked_until > now else None


def params(key: str, limit: Limit, now: dt.datetime, prefix: str = "") -> dict[str, Any]:
    """The bound values of :func:`counting` for one key."""
    waits = limit.waits()
    until = [now + dt.timedelta(seconds=w) for w in waits]
    values: dict[str, Any] = {
        "key": key,
        "now": now,
        "cutoff": now - dt.timedelta(seconds=limit.window),
        "free": limit.free,
        "first_lock": until[0] if limit.free <= 1 else None,
    }
    values |= {f"until{i}": u for i, u in enumerate(until)}
    return {prefix + name: value for name, value in values.items()}


def steps(limit: Limit) -> int:
    return len(limit.waits())


@functools.cache
def counting(dialect_name: str, steps: int, prefix: str = "") -> Any:
    """``INSERT … ON CONFLICT DO UPDATE … RETURNING refused, locked_until`` counting one attempt
    against one key (built once per shape; :func:`params` gives its values). A row whose wait is
    still running is left as it is and the attempt refused."""
    t = Throttle.__table__

    def p(name: str, type_: Any = None) -> Any:
        return bindparam(prefix + name, type_=type_)

    now, cutoff = p("now", UTCDateTime()), p("cutoff", UTCDateTime())
    locked = and_(t.c.locked_until.is_not(None), t.c.locked_until > now)
    expired = func.coalesce(t.c.locked_until, t.c.window_start) <= cutoff
    attempt = t.c.failures + 1
    waits = [(attempt - p("free") == i, p(f"until{i}", UTCDateTime())) for i in range(steps - 1)]
    next_lock = case(
        (locked, t.c.locked_until),
        (expired, p("first_lock", UTCDateTime())),
        (attempt < p("free"), null()),
        *waits,
        else_=p(f"until{steps - 1}", UTCDateTime()),
    )
    insert = (pg_insert if dialect_name == dialect.POSTGRES else sqlite_insert)(t).values(
        key=p("key"), failures=1, window_start=now, locked_until=p("first_lock", UTCDateTime()), lockouts=0, refused=False
    )
    return insert.on_conflict_do_update(
        index_elements=[t.c.key],
        set_={
            "refused": locked,
            "failures": case((locked, t.c.failures), (expired, 1), else_=attempt),
            "window_start": case((locked, t.c.window_start), else_=now),
            "locked_until": next_lock,
        },
    ).returning(t.c.refused, t.c.locked_until)


def outcome(refused: bool, locked_until: dt.datetime | None, now: dt.datetime) -> Count:
    return Count(bool(refused), seconds_until(locked_until, now))


async def take(db: AsyncSession, key: str, limit: Limit, now: dt.datetime | None = None) -> Count:
    """Count one attempt against ``key`` (before the work it guards)."""
    now = now or utcnow()
    statement = counting(dialect.name(db), steps(limit))
    refused, locked_until = (await db.execute(statement, params(key, limit, now))).one()
    return outcome(refused, locked_until, now)


async def take_all(db: AsyncSession, counts: list[tuple[str, Limit]], now: dt.datetime | None = None) -> Count:
    """Count one attempt against each key; refused when any is, waiting as long as the longest.
    On Postgres it is one statement (one round trip), each key's count a data-modifying CTE."""
    now = now or utcnow()
    if dialect.is_postgres(db) and len(counts) > 1:
        statement = _counting_together(tuple(steps(limit) for _, limit in counts))
        values: dict[str, Any] = {}
        for i, (key, limit) in enumerate(counts):
            values |= params(key, limit, now, prefix=f"k{i}_")
        row = (await db.execute(statement, values)).one()
        results = [outcome(row[2 * i], row[2 * i + 1], now) for i in range(len(counts))]
    else:
        results = [await take(db, key, limit, now) for key, limit in counts]
    waits = [c.wait for c in results if c.wait is not None]
    return Count(any(c.refused for c in results), max(waits) if waits else None)


@functools.cache
def _counting_together(shapes: tuple[int, ...]) -> Any:
    ctes = [counting(dialect.POSTGRES, n, f"k{i}_").cte(f"k{i}") for i, n in enumerate(shapes)]
    joined: Any = ctes[0]
    for cte in ctes[1:]:
        joined = joined.join(cte, true())  # one row each
    return select(*(c for cte in ctes for c in (cte.c.refused, cte.c.locked_until))).select_from(joined)


async def clear(db: AsyncSession, key: str) -> None:
    """Forget ``key``'s streak (a success)."""
    await db.execute(delete(Throttle).where(Throttle.key == key))


async def refund(db: AsyncSession, key: str) -> None:
    """Give back the attempt counted against ``key`` (a success from a shared address)."""
    await db.execute(update(Throttle).where(Throttle.key == key, Throttle.failures > 0).values(failures=Throttle.failures - 1))
