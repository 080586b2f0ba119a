"""Erasure of a hub account, in the caller's transaction.

Refused while any link is active: each member service controls its own account, which the
person cancels there (:func:`blocking_services` gives each one's cancellation route). Refused
too while a rights request addressed to a service is still open (:func:`blocking_requests`):
erasing the account would delete the request with it, and the person could no longer follow
what that service owes them. Otherwise
the sessions end (back-channel logout notices are returned for the caller to send after it
commits), the account row is deleted and every row about the person goes with it (foreign keys
cascade from ``accounts``: tokens, codes and sessions too), a
:class:`~identity.db.models.Tombstone` keeps the ``sub`` and the time, and an audit record says
who erased it, with no personal data beyond the ``sub``.

Nothing stale brings the account back: the fan-out and the deliverer find no account for that
``sub`` and drop what names it, and a new account never gets a tombstoned ``sub``. Notices still
waiting for a service (say, the unlink that came just before) are kept and still delivered: they
carry only the ``sub``. A service with a SCIM server is sent a ``DELETE`` of the person's User."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity import notices as service_notices
from identity.db.models import (
    Account,
    AuditRecord,
    Link,
    Notice,
    RightsRequest,
    Service,
    Tombstone,
    utcnow,
)
from identity.oidc.keys import KeyRing
from identity.ssf import emit, events
from identity.oidc.logout import LogoutNotice, end_sessions_of
from identity.rights.lifecycle import OPEN


@dataclass(frozen=True)
class OpenRequest:
    """A rights request to a service that is still open: what blocks an erasure, besides links."""

    id: str
    type: str
    status: str
    service_name: str
    client_id: str
    due_at: dt.datetime


class LinksStillActive(Exception):
    """The erasure must wait: the person still has an account at ``services`` (they cancel it
    there first), or ``requests`` to services are still open (the services answer them first)."""

    def __init__(self, services: list[Service], requests: list[OpenRequest] | None = None) -> None:
        super().__init__("linked accounts are still active" if services else "rights requests to services are still open")
        self.services = services
        self.requests = requests or []


async def blocking_requests(db: AsyncSession, account_id: int) -> list[OpenRequest]:
    """The person's rights requests to services that are not completed or refused yet."""
    rows = await db.execute(
        select(RightsRequest, Service.name, Service.client_id)
        .join(Service, Service.id == RightsRequest.service_id)
        .where(RightsRequest.account_id == account_id, RightsRequest.status.in_(OPEN))
        .order_by(RightsRequest.due_at, RightsRequest.id)
    )
    return [
        OpenRequest(id=r.public_id, type=r.type, status=r.status, service_name=name, client_id=client_id, due_at=r.due_at)
        for r, name, client_id in rows
    ]


async def blocking_services(db: AsyncSession, account_id: int) -> list[Service]:
    """The services whose link is active (with their cancellation routes)."""
    return list(
        (
            await db.scalars(
                select(Service)
                .join(Link, Link.service_id == Service.id)
                .where(Link.account_id == account_id, Link.is_active)
                .order_by(Service.name, Service.id)
            )
        ).all()
    )


async def erase(
    db: AsyncSession,
    account: Account,
    *,
    keys: KeyRing | None,
    issuer: str,
    actor_kind: str,
    actor: str | None = None,
    reason: str | None = None,
    now: dt.datetime | None = None,
    despite_links: bool = False,
) -> list[LogoutNotice]:
    """Erase ``account``; raise :class:`LinksStillActive` while a link is active or a rights
    request to a service is open (unless ``despite_links``: a child's account past its grace,
    whose services were told when it was restricted, is erased all the same). ``keys`` sign the back-channel logout tokens (None: none are made)."""
    now = now or utcnow()
    # Locked first: a concurrent sign-in to a service cannot link the account meanwhile.
    await db.refresh(account, with_for_update=True)
    if not despite_links:
        services = await blocking_services(db, account.id)
        requests = await blocking_requests(db, account.id)
        if services or requests:
            raise LinksStillActive(services, requests)
    notices = await end_sessions_of(db, keys, issuer, account.id) if keys is not None else []
    # Shared Signals: services still linked (a child's account past its grace) hear it is gone;
    # the SETs are kept with the other notices when the account's rows go.
    await emit.emit(db, account.id, events.account_purged(), now=now)
    await db.execute(
        update(Notice).where(Notice.account_id == account.id, Notice.state == "pending").values(account_id=None)
    )
    # Every service that ever had the person, and has a SCIM server, deletes their User there.
    for service in await db.scalars(
        select(Service).join(Link, Link.service_id == Service.id).where(Link.account_id == account.id, Service.scim_base_url.is_not(None))
    ):
        service_notices.add_scim(db, service, None, account.sub, "delete", now=now)
    db.add(Tombstone(sub=account.sub, erased_at=now))
    db.add(AuditRecord(at=now, actor_kind=actor_kind, actor=actor, account_sub=account.sub, action="account.erased", reason=reason))
    await db.flush()
    await db.execute(delete(Account).where(Account.id == account.id))
    db.expunge(account)
    return notices


async def is_erased(db: AsyncSession, sub: str) -> bool:
    return await db.get(Tombstone, sub) is not None
