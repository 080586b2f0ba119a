"""A person's second factors taken together: the authenticator app (``second_factor``) and
passkeys (``passkeys``), for those who act on both at once (support, operators)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Exists, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import passkeys, second_factor
from identity.db.models import Passkey, SecondFactor


@dataclass(frozen=True)
class Removed:
    authenticator_app: bool
    passkeys: int

    def __bool__(self) -> bool:
        return self.authenticator_app or self.passkeys > 0


def held(account_id: Any) -> tuple[Exists, Exists]:
    """The tests, for a statement, of whether the account ``account_id`` (an id, or an expression
    giving one) has a confirmed authenticator app, and whether it has a passkey: what sign-in asks
    for as a second factor."""
    app = exists().where(SecondFactor.account_id == account_id, SecondFactor.confirmed_at.is_not(None))
    keys = exists().where(Passkey.account_id == account_id)
    return app, keys


async def enrolled(db: AsyncSession, account_id: int) -> bool:
    """Whether sign-in asks the account for a second factor: a confirmed authenticator app
    (``second_factor.enrolled``) or a passkey, in one statement."""
    app, keys = held(account_id)
    return bool(await db.scalar(select(app | keys)))


async def remove_all(db: AsyncSession, account_id: int) -> Removed:
    """Remove the authenticator app and every passkey; say what there was."""
    return Removed(await second_factor.remove(db, account_id, initiator="admin"), await passkeys.remove_all(db, account_id))
