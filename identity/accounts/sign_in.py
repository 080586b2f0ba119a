"""Password sign-in attempts under throttling, in two short transactions with the password
checked between them (no database connection is held while argon2id runs):

1. :func:`begin_attempt` counts the attempt against its keys (the known browser's, else the
   typed address's and the client address's), refusing it at once while a wait runs, and finds
   the account the address names;
2. :func:`check_password` checks the password on the hashing queue (and rehashes it when the
   parameters changed);
3. :func:`finish_attempt` settles the counts and records the sign-in history; on Postgres the
   common success is written by one statement (:func:`sign_in_at_once`).

Functions take plain values and the caller's session, and never commit; starting the browser's
session is the caller's."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import factors, throttle
from identity.accounts.hashing import HashQueue
from identity.accounts.passwords import PasswordHasher
from identity.db.models import Account, BrowserSession, SignInEvent, Throttle, UTCDateTime, utcnow
from identity.i18n import lazy_gettext, ngettext, pgettext
from schemas.account import normalize_email

WRONG = lazy_gettext("The email address or password is incorrect.")


class SignInRefused(Exception):
    def __init__(self, message: Any, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Attempt:
    """A password check between its two short transactions (the password is checked between
    them, so no database connection is held while argon2id runs)."""

    keys: throttle.Keys
    account_id: int | None
    password_hash: str | None
    #: Seconds the next attempt must wait if this one fails (it reached the limit), or None.
    wait_if_wrong: int | None
    new_hash: str | None = None
    #: The account's second factors, read with it: a confirmed authenticator app, a passkey.
    has_app: bool = False
    has_passkey: bool = False

    @property
    def cleared_key(self) -> str:
        """The key a success clears: the known browser's, else the typed address's."""
        return self.keys.device or self.keys.account

    @property
    def refunded_key(self) -> str | None:
        """The key a success gives its attempt back to: the client address (a stranger's)."""
        return None if self.keys.device else self.keys.address


async def begin_attempt(
    db: AsyncSession, keys: throttle.Keys, email: str, limits: tuple[throttle.Limit, throttle.Limit]
) -> Attempt:
    """Count the attempt before the password is checked, refusing it at once while a wait runs
    (``limits``: per account or known browser, and per client address), and find the account
    the email names (two statements: a read of the account and the atomic count)."""
    try:
        normalized: str | None = normalize_email(email)
    except ValueError:
        normalized = None
    account_id, password_hash, has_app, has_passkey = (await db.execute(_FIND_ACCOUNT, {"email": normalized})).one()
    account_limit, address_limit = limits
    if keys.device:
        counts = [(keys.device, account_limit)]
    else:
        counts = [(keys.account, account_limit), (keys.address, address_limit)]
    counted = await throttle.take_all(db, counts)
    if counted.refused:
        raise SignInRefused(
            ngettext(
                "Too many failed attempts. Try again in %(num)d second.", "Too many failed attempts. Try again in %(num)d seconds.", counted.wait
            ),
            429,
        )
    return Attempt(keys, account_id, password_hash, counted.wait, has_app=bool(has_app), has_passkey=bool(has_passkey))


async def check_password(hashing: HashQueue, hasher: PasswordHasher, attempt: Attempt, password: str) -> bool:
    ok = await hashing.verify(attempt.password_hash, password) and attempt.account_id is not None
    if ok and attempt.password_hash and hasher.needs_rehash(attempt.password_hash):
        attempt.new_hash = await hashing.hash(password)
    return ok


def wrong(attempt: Attempt, message: Any = WRONG) -> SignInRefused:
    if attempt.wait_if_wrong is not None:
        wait = ngettext(
            "Too many failed attempts: try again in %(num)d second.",
            "Too many failed attempts: try again in %(num)d seconds.",
            attempt.wait_if_wrong,
        )
        # Translators: a reason a password was refused, then how long to wait ("The password is not correct. Too many …").
        return SignInRefused(pgettext("two sentences", "%(reason)s %(wait)s", reason=message, wait=wait), 429)
    return SignInRefused(message, 400)


async def settle(db: AsyncSession, attempt: Attempt, ok: bool) -> None:
    """A success clears the streak (the known browser's, else the typed address's) and gives
    the client address its attempt back; a failure leaves the counts as they were counted."""
    if ok:
        await throttle.clear(db, attempt.cleared_key)
        if attempt.refunded_key is not None:
            await throttle.refund(db, attempt.refunded_key)
        if attempt.new_hash:
            await db.execute(update(Account).where(Account.id == attempt.account_id).values(password_hash=attempt.new_hash))


async def finish_attempt(db: AsyncSession, attempt: Attempt, ok: bool, *, address: str) -> int | SignInRefused:
    """Record the outcome (throttle counters, sign-in history from the client ``address``) and
    return the account id, or the refusal to show. The caller commits either way."""
    event = {"address": address, "at": utcnow()}
    await settle(db, attempt, ok)
    if not ok or attempt.account_id is None:
        if attempt.account_id is not None:
            await db.execute(insert(SignInEvent).values(account_id=attempt.account_id, succeeded=False, **event))
        return wrong(attempt)
    await db.execute(insert(SignInEvent).values(account_id=attempt.account_id, succeeded=True, **event))
    return attempt.account_id


async def sign_in_at_once(db: AsyncSession, attempt: Attempt, session: dict[str, Any], *, address: str) -> None:
    """The common successful sign-in on Postgres: the throttle streak is cleared, the address's
    attempt given back, and the browser ``session`` row and the sign-in record written by one
    statement (data-modifying CTEs), atomic on its own, in one round trip (``db`` may
    autocommit)."""
    assert attempt.account_id is not None
    params = {f"s_{c}": v for c, v in session.items()} | {
        "cleared_key": attempt.cleared_key,
        "refunded_key": attempt.refunded_key or "",
        "address": address,
    }
    await db.execute(_signed_in(tuple(session)), params)


# Built once: only their parameters change from one sign-in to the next, so SQLAlchemy neither
# rebuilds them nor recomputes their cache keys.
# A disabled account (``onesignin users disable``) is not found: it cannot sign in. Its second
# factors are read with it (sign-in asks for one when it has one), in the same round trip.
_ACCOUNT_ID = select(Account.id).where(Account.email == bindparam("email"), Account.disabled_at.is_(None)).scalar_subquery()
_FIND_ACCOUNT = select(
    _ACCOUNT_ID,
    select(Account.password_hash).where(Account.email == bindparam("email"), Account.disabled_at.is_(None)).scalar_subquery(),
    *factors.held(_ACCOUNT_ID),
)


@functools.cache
def _signed_in(columns: tuple[str, ...]) -> Any:
    throttles, sessions, events = Throttle.__table__, BrowserSession.__table__, SignInEvent.__table__
    cleared = delete(throttles).where(throttles.c.key == bindparam("cleared_key")).returning(throttles.c.key).cte("cleared")
    refunded = (
        update(throttles)
        .where(throttles.c.key == bindparam("refunded_key"), throttles.c.failures > 0)
        .values(failures=throttles.c.failures - 1)
        .returning(throttles.c.key)
        .cte("refunded")
    )
    session = (
        insert(sessions)
        .values({c: bindparam(f"s_{c}", type_=sessions.c[c].type) for c in columns})
        .returning(sessions.c.account_id)
        .cte("new_session")
    )
    return insert(events).from_select(
        ["account_id", "address", "succeeded", "at"],
        select(
            session.c.account_id,
            bindparam("address", type_=events.c.address.type),
            literal(True),
            bindparam("s_created_at", type_=UTCDateTime()),
        ),
    ).add_cte(cleared).add_cte(refunded)
