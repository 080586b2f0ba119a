"""Accounts and their basic details. Every change goes through :func:`update_details` (or
:func:`mark_email_verified`), which bumps the account's ``version``, records what changed, when
and through which channel, and queues a ``profile.changed`` event in the outbox, all in the
caller's transaction; or, where one statement does all that, through :func:`change_at_once`,
which commits it on its own. A changed address also ends the mailed links that acted for the old one
(``identity.accounts.links``), whichever channel changed it."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any, Literal

from sqlalchemy import bindparam, insert, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from identity import outbox
from identity.accounts import links
from identity.accounts.children import ChildPolicy, check_proxy_birthdate, rectified
from identity.db import dialect
from identity.db.engine import autocommit
from identity.ssf import emit, events
from identity.db.models import Account, AccountChange, AccountStatus, OutboxEvent, Tombstone, utcnow
from schemas.events import ProfileChanged

Channel = Literal["person", "service", "support", "cli"]

MARKETING = ("marketing_news", "marketing_competitions", "marketing_offers")
DETAIL_FIELDS = (
    "email",
    "given_name",
    "family_name",
    "name",
    "birthdate",
    "locale",
    "zoneinfo",
    "phone_number",
    "address",
    *MARKETING,
)


class EmailTaken(Exception):
    """Another account already uses that email address."""


async def find_by_email(session: AsyncSession, email: str) -> Account | None:
    return await session.scalar(select(Account).where(Account.email == email))


async def find_by_sub(session: AsyncSession, sub: str) -> Account | None:
    return await session.scalar(select(Account).where(Account.sub == sub))


async def create_account(
    session: AsyncSession,
    *,
    email: str,
    password_hash: str,
    details: dict[str, Any],
    channel: Channel,
    actor: str | None = None,
    status: AccountStatus = AccountStatus.ACTIVE,
    guardian_email: str | None = None,
) -> Account:
    if await find_by_email(session, email) is not None:
        raise EmailTaken(email)
    now = utcnow()
    sub = str(uuid.uuid4())
    while await session.get(Tombstone, sub) is not None or await find_by_sub(session, sub) is not None:
        sub = str(uuid.uuid4())  # an erased account's sub is never given out again
    account = Account(
        sub=sub,
        email=email,
        email_verified=False,
        password_hash=password_hash,
        status=status,
        guardian_email=guardian_email,
        version=1,
        created_at=now,
        updated_at=now,
    )
    for key, value in _apply(account, {k: v for k, v in details.items() if k != "email"}, now)[1].items():
        setattr(account, key, value)
    if account.name is None and (account.given_name or account.family_name):
        account.name = " ".join(p for p in (account.given_name, account.family_name) if p)
    session.add(account)
    await session.flush()
    session.add(AccountChange(account_id=account.id, version=1, fields=["created"], channel=channel, actor=actor, at=now))
    return account


def _apply(account: Account, changes: dict[str, Any], now: dt.datetime) -> tuple[list[str], dict[str, Any]]:
    """The details that really change, and the account's new values (by attribute)."""
    changed, values = [], {}
    for field, value in changes.items():
        if field not in DETAIL_FIELDS:
            raise KeyError(field)
        if getattr(account, field) == value:
            continue
        if field in MARKETING:
            value = bool(value)
            values[f"{field}_at"] = now
        if field == "email":
            values["email_verified"] = False
        values[field] = value
        changed.append(field)
    return changed, values


async def update_details(
    session: AsyncSession,
    account: Account,
    changes: dict[str, Any],
    *,
    channel: Channel,
    actor: str | None = None,
    client_id: str | None = None,
    children: ChildPolicy | None = None,
    email_confirmed: bool = False,
) -> list[str]:
    """Apply ``changes`` (claim name to new value); return the names that really changed.
    ``client_id`` names the member service that made the change (channel "service").
    A new ``email`` is unconfirmed unless ``email_confirmed`` (the person just opened a link
    mailed to it); either way the reset and confirmation links of the old address stop working.
    Concurrent changes each get their own version: the change is worked out from the account as
    the caller read it and written only if the row still has that version (compare and set, in
    the same statement); if another transaction changed it meanwhile, or the change would change
    nothing, the row is locked, read again and the change worked out anew. A new address or date
    of birth, which read more than the account's row, lock and read it first.
    A changed date of birth that makes the account a child's without a guardian's consent
    restricts it at once (``identity.accounts.children``; pass the configured ``children``
    policy, ``ChildPolicy.of(settings)``). Only the person may set a date of birth that turns
    an adult into a child: from a service or support it raises ``OnlyThePerson``, before anything
    is written."""
    locked = _lock_first(session, account, changes)
    if locked:
        await _lock(session, account)
    changed = await _update(session, account, changes, channel, actor, client_id, children, email_confirmed, locked=locked)
    if changed is None:
        # Read before another transaction's change, or nothing to change as read: as it is now.
        await _lock(session, account)
        changed = await _update(session, account, changes, channel, actor, client_id, children, email_confirmed, locked=True)
        if changed is None:
            raise RuntimeError("a change to a locked account row was not written")
    return changed


async def change_at_once(
    sessions: async_sessionmaker[AsyncSession],
    account: Account,
    changes: dict[str, Any],
    *,
    channel: Channel,
    actor: str | None = None,
    client_id: str | None = None,
    children: ChildPolicy | None = None,
    shared_only: bool = False,
) -> list[str] | None:
    """:func:`update_details` as one statement that commits on its own, without a transaction's
    BEGIN and COMMIT round trips, where the change allows it: on Postgres (where the account's
    row, its history row and its event are one statement), for a change that needs nothing but
    that row (no new address or date of birth, which :func:`update_details` locks and reads
    first), to an account object read earlier, in any session, with what a change is worked out
    from. The row is written only if it still has the object's version and, ``shared_only``,
    may still be shared with services (it is not a child's waiting for a guardian's consent).

    Returns the names changed, or ``None`` when nothing was written (another change came first,
    nothing changes as read, the account may no longer be shared, or the change needs more): the
    caller then makes it with :func:`update_details` in a transaction, which locks and reads the
    row and decides anew. Raises ``OnlyThePerson`` as :func:`update_details` does."""
    if not dialect.opens_postgres(sessions):
        return None
    async with autocommit(sessions) as session:
        session.add(account)
        if _lock_first(session, account, changes):
            return None
        return await _update(session, account, changes, channel, actor, client_id, children, False, locked=False, shared_only=shared_only)


#: Claims whose change depends on more than the account's row (another account's address, the
#: links mailed to the old one, the child policy and the account's status): the row is locked
#: and read before a new value of theirs is worked out.
_LOCK_FIRST = ("email", "birthdate")


def _lock_first(session: AsyncSession, account: Account, changes: dict[str, Any]) -> bool:
    """Whether the row must be locked and read before the change is worked out: the object lacks
    the account's details or version, holds changes of its own not yet written (reading the row
    discards them, as it always did, rather than writing them without a version), or the change
    gives a new address or date of birth (as read)."""
    state = inspect(account)
    if not state.persistent or _READ & state.unloaded or session.is_modified(account, include_collections=False):
        return True
    return any(name in changes and changes[name] != getattr(account, name) for name in _LOCK_FIRST)


async def _update(
    session: AsyncSession,
    account: Account,
    changes: dict[str, Any],
    channel: Channel,
    actor: str | None,
    client_id: str | None,
    children: ChildPolicy | None,
    email_confirmed: bool,
    *,
    locked: bool,
    shared_only: bool = False,
) -> list[str] | None:
    """The change as :func:`update_details` describes it, worked out from the account object;
    ``None`` (nothing written) if the row is not ``locked`` and the change is empty as read or
    the row's version is no longer the object's (or, ``shared_only``, the account may no longer
    be shared)."""
    now = utcnow()
    if "birthdate" in changes and channel in ("service", "support"):
        check_proxy_birthdate(account, changes["birthdate"], children or ChildPolicy(), now.date())
    if "email" in changes and changes["email"] != account.email:
        other = await find_by_email(session, changes["email"])
        if other is not None and other.id != account.id:
            raise EmailTaken(changes["email"])
    names_given = {"given_name", "family_name"} & changes.keys()
    old_email = account.email
    changed, values = _apply(account, changes, now)
    if names_given and "name" not in changes and changed:
        given, family = values.get("given_name", account.given_name), values.get("family_name", account.family_name)
        full = " ".join(p for p in (given, family) if p) or None
        if full != account.name:
            values["name"] = full
            changed.append("name")
    if not changed:
        return [] if locked else None
    if "email" in changed:
        values["email_verified"] = email_confirmed
        changed.append("email_verified")
        # Shared Signals: services that may see the address hear of the new one (RISC).
        await emit.emit(session, account.id, events.identifier_changed(old_email, values["email"]), now=now)
        await links.cancel(session, account.id, links.ADDRESS_BOUND, now=now)
    if not await _record(session, account, values, changed, now, channel=channel, actor=actor, client_id=client_id, shared_only=shared_only):
        return None
    if "birthdate" in changed:
        await rectified(session, account, children or ChildPolicy(), now)
    return changed


async def mark_email_verified(session: AsyncSession, account: Account, *, channel: Channel = "person") -> bool:
    """The person proved they receive mail at their address; False if it already was verified."""
    await _lock(session, account)
    if account.email_verified:
        return False
    if not await _record(session, account, {"email_verified": True}, ["email_verified"], utcnow(), channel=channel, actor=account.sub, client_id=None):
        raise RuntimeError("a change to a locked account row was not written")
    return True


async def _lock(session: AsyncSession, account: Account) -> None:
    await session.refresh(account, with_for_update=True)


async def _record(
    session: AsyncSession,
    account: Account,
    values: dict[str, Any],
    changed: list[str],
    now: dt.datetime,
    *,
    channel: Channel,
    actor: str | None,
    client_id: str | None,
    shared_only: bool = False,
) -> bool:
    """Write the account's new ``values`` (by attribute) with the next version, its history row
    and its event (one statement on Postgres), if the row still has the object's version (and,
    ``shared_only``, may be shared); then put them on the object (:func:`_put`). Whether it was
    written."""
    version = account.version + 1
    bumped = {"version": version, "updated_at": now}
    written = {_COLUMNS[key]: value for key, value in (values | bumped).items()}
    event = ProfileChanged(
        id=outbox.new_event_id(),
        sub=account.sub,
        version=version,
        changed=changed,
        channel=channel,
        client_id=client_id,
        occurred_at=now,
    )
    history = {"account_id": account.id, "version": version, "fields": changed, "channel": channel, "actor": actor, "at": now}
    params = (
        {f"a_{k}": v for k, v in written.items()}
        | {"a__id": account.id, "a__read": account.version}
        | {f"h_{k}": v for k, v in history.items()}
        | {f"e_{k}": v for k, v in outbox.row(event).items()}
    )
    statements = _account_history_and_event(dialect.name(session), frozenset(written), shared_only=shared_only)
    if len(statements) == 1:  # Postgres: the event is written (and returned) only with the account
        done = (await session.execute(statements[0], params)).first() is not None
    else:
        done = (await session.execute(statements[0], params)).rowcount == 1
        if done:
            for statement in statements[1:]:
                await session.execute(statement, params)
    if done:
        _put(session, account, values | bumped)
    return done


def _put(session: AsyncSession, account: Account, values: dict[str, Any]) -> None:
    """Set ``values`` (by attribute) on the account as written: the change's own statement
    writes them (:func:`_record`), so the ORM has nothing to flush for them, not even an empty
    unit of work. Inside a savepoint they count as changes too, so that rolling back to it
    expires them with the rest of what it undid (a whole transaction's rollback expires every
    object anyway)."""
    nested = session.in_nested_transaction()
    for key, value in values.items():
        if nested:
            setattr(account, key, value)
        set_committed_value(account, key, value)


#: The account's mapped columns but its key: attribute name to column name.
_COLUMNS = {attr.key: attr.columns[0].name for attr in inspect(Account).column_attrs if not attr.columns[0].primary_key}

#: What a change is worked out from: the account's details, its version and identifiers.
_READ = frozenset({*DETAIL_FIELDS, "version", "id", "sub"})


@functools.lru_cache(maxsize=64)
def _account_history_and_event(dialect_name: str, columns: frozenset[str], *, shared_only: bool = False) -> tuple[Any, ...]:
    """The account's UPDATE of ``columns`` where its version is still the one read (and,
    ``shared_only``, it may be shared), the change's history row and its event, built once per
    set of columns with bound parameters. On Postgres
    one statement: the history row and the event are inserted from what the UPDATE returned
    (nothing if it matched no row), and the event's id returned. Elsewhere three, the inserts
    run only if the UPDATE matched its row."""
    accounts = Account.__table__
    account = (
        update(accounts)
        .where(accounts.c.id == bindparam("a__id"), accounts.c.version == bindparam("a__read"))
        .values({name: bindparam(f"a_{name}", type_=accounts.c[name].type) for name in sorted(columns)})
    )
    if shared_only:
        account = account.where(Account.may_be_shared)

    def columns_of(table: Any) -> list[Any]:
        return [c for c in table.c if not c.primary_key and c.name in _WRITTEN[table.name]]

    if dialect_name == dialect.POSTGRES:
        updated = account.returning(accounts.c.id).cte("account")

        def copied(table: Any, prefix: str) -> Any:
            cols = columns_of(table)
            return insert(table).from_select(cols, select(*(bindparam(f"{prefix}{c.name}", type_=c.type) for c in cols)).select_from(updated))

        history = copied(AccountChange.__table__, "h_")
        event = copied(OutboxEvent.__table__, "e_").returning(OutboxEvent.__table__.c.id)
        return (event.add_cte(updated).add_cte(history.cte("history")),)

    def values(table: Any, prefix: str) -> Any:
        return insert(table).values({c.name: bindparam(f"{prefix}{c.name}", type_=c.type) for c in columns_of(table)})

    return (account, values(AccountChange.__table__, "h_"), values(OutboxEvent.__table__, "e_"))


_WRITTEN = {
    "account_changes": {"account_id", "version", "fields", "channel", "actor", "at"},
    "outbox": {"topic", "key", "event_type", "payload", "created_at", "request_id"},
}
