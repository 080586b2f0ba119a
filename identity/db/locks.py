"""Every Postgres advisory lock the hub takes, each under its own id, in one place.

Advisory lock ids are one flat namespace per database: two features that picked the same number
would wait on each other for no reason (a signing-key rotation behind the outbox relay's
batch), or worse, skip work believing another process does it. So every id is a member of
:class:`AdvisoryLock` (``unique``: a duplicate value fails at import), and the statements that
take them are here. Each is transaction-scoped (``pg_advisory_xact_lock``): released at commit
or rollback, and by Postgres if the process dies."""

from __future__ import annotations

import enum

from sqlalchemy import TextClause, text

__all__ = ["AdvisoryLock", "take", "try_take"]


@enum.unique
class AdvisoryLock(enum.IntEnum):
    #: One migrator at a time (``identity.db.migrate``).
    MIGRATIONS = 0x05161
    #: One outbox relay publishes at a time, keeping the events' order (``sync.relay``).
    OUTBOX_RELAY = 0x05162
    #: One process creates the next signing key (``identity.oidc.keys.ensure_keys``).
    SIGNING_KEYS = 0x05163


def take(lock: AdvisoryLock) -> TextClause:
    """``SELECT`` that waits for ``lock`` and holds it until the transaction ends."""
    return text("SELECT pg_advisory_xact_lock(:id)").bindparams(id=int(lock))


def try_take(lock: AdvisoryLock) -> TextClause:
    """``SELECT`` answering true with ``lock`` taken until the transaction ends, false at once
    when another transaction holds it."""
    return text("SELECT pg_try_advisory_xact_lock(:id)").bindparams(id=int(lock))
