"""The life of a link between a person and a member service: made by the first sign-in to the
service (:func:`link`, which also widens it and makes an ended link active again), and ended.

Linking does not change who controls the service's account: the service does. So a link ends
in one of two ways, and neither cancels anything at the service:

* ``revoked``: the person unlinked the service at the hub (withdrew their consent to share).
  The service is told with a ``link.revoked`` notice; its account is its own to keep or cancel.
* ``cancelled``: the service reports that it cancelled its own account for the person.

Either way sync to that service stops at once (its queued deliveries for the person are
dropped), the person's tokens and consent for it are revoked, and the hub sessions that signed
in to it are logged out of it by back-channel logout (the logout tokens are returned, to be sent
once the caller commits). Signing in to the service again makes the link active again, with a
fresh snapshot. Functions take the caller's session and never commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity import notices, outbox
from identity.db.models import (
    Account,
    AuthorizationCode,
    BrowserSession,
    Consent,
    Delivery,
    Link,
    LinkStatus,
    Notice,
    Service,
    SessionService,
    Token,
    utcnow,
)
from identity.db.upsert import ensure_row
from identity.errors import storable
from identity.oidc import scopes
from identity.oidc.keys import KeyRing
from identity.oidc.logout import LogoutNotice, logout_token
from schemas.events import LinkCreated, LinkRevoked, LinkRevokedData

Ended = Literal[LinkStatus.REVOKED, LinkStatus.CANCELLED]
MAX_SUB = 64


@dataclass(frozen=True)
class HeldAccount:
    """A service that holds (or held) an account for the person, and how to cancel it there."""

    name: str
    client_id: str
    status: str
    cancellation_url: str | None
    cancellation_instructions: str | None


async def link(db: AsyncSession, *, account_id: int, service_id: int, scope: str, now: dt.datetime) -> None:
    """Link the service to the person, as they authorize it to sign them in with ``scope``: the
    first authorization links it; later ones widen the granted scopes; one after the link ended
    (unlinked or cancelled) makes it active again from what was granted now. A new link, a relink
    or wider scopes sends the service a snapshot of what it may now see (``link.created`` in the
    outbox)."""
    created = await ensure_row(
        db, Link, account_id=account_id, service_id=service_id, status=LinkStatus.ACTIVE, scope=scope, created_at=now, updated_at=now
    )
    link = await db.scalar(
        select(Link)
        .where(Link.account_id == account_id, Link.service_id == service_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert link is not None
    # A link that ended (unlinked or cancelled) starts again from what was granted now: its
    # consent was revoked with it.
    kept = set(scopes.split(link.scope)) if link.is_active else set()
    widened = scopes.join(kept | set(scopes.split(scope)))
    if created or not link.is_active or widened != link.scope:
        # A new link, a relink or wider scopes: the service gets a snapshot of what it may now see.
        if not created and not link.is_active:
            # A relink: a ``link.revoked`` (or a SCIM deactivation) still waiting to be sent would
            # reach the service after the relink and undo it there. It is withdrawn in this
            # transaction.
            await db.execute(
                delete(Notice).where(
                    Notice.service_id == service_id,
                    Notice.account_id == account_id,
                    Notice.event_type.in_(("link.revoked", "scim.deactivate")),
                    Notice.state == "pending",
                )
            )
        link.status, link.scope, link.updated_at = LinkStatus.ACTIVE, widened, now
        account = await db.get(Account, account_id)
        service = await db.get(Service, service_id)
        assert account is not None and service is not None
        outbox.add(
            db,
            LinkCreated(id=outbox.new_event_id(), sub=account.sub, client_id=service.client_id, version=account.version, occurred_at=now),
        )


async def link_of(
    db: AsyncSession, service_id: int, sub: str, *, lock: bool = False
) -> tuple[Link, Account] | None:
    """The link between ``service_id`` and the person ``sub``, whatever its status; None when
    the person is unknown or never linked that service (the two are not told apart)."""
    if not (0 < len(sub) <= MAX_SUB) or not storable(sub):
        return None  # checked before the query: a NUL would be the database's error, not a 404
    query = (
        select(Link, Account)
        .join(Account, Account.id == Link.account_id)
        .where(Account.sub == sub, Link.service_id == service_id)
    )
    if lock:
        query = query.with_for_update(of=Link).execution_options(populate_existing=True)
    row = (await db.execute(query)).first()
    return (row[0], row[1]) if row else None


async def end(
    db: AsyncSession,
    keys: KeyRing,
    issuer: str,
    link: Link,
    account: Account,
    service: Service,
    status: Ended,
    *,
    now: dt.datetime | None = None,
) -> list[LogoutNotice]:
    """End ``link`` with ``status``; stop everything that flowed through it. Idempotent.
    Returns the back-channel logout notices to send after the caller commits."""
    now = now or utcnow()
    if link.is_active:
        link.ended_at = now
    if link.status != status:
        link.status, link.updated_at = status, now
    # Sync stops at once: what was queued for this person is dropped (a relink starts afresh).
    await db.execute(
        delete(Delivery).where(
            Delivery.service_id == service.id, Delivery.account_id == account.id
        )
    )
    await db.execute(
        update(Token)
        .where(
            Token.service_id == service.id,
            Token.account_id == account.id,
            Token.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    await db.execute(
        delete(AuthorizationCode).where(
            AuthorizationCode.service_id == service.id,
            AuthorizationCode.account_id == account.id,
            AuthorizationCode.used_at.is_(None),
        )
    )
    await db.execute(
        update(Consent)
        .where(
            Consent.service_id == service.id,
            Consent.account_id == account.id,
            Consent.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    return await _log_out(db, keys, issuer, account, service)


async def _log_out(
    db: AsyncSession, keys: KeyRing, issuer: str, account: Account, service: Service
) -> list[LogoutNotice]:
    """Log the person's live hub sessions out of ``service`` (only that service: the hub
    session and the other services stay signed in)."""
    sessions = (
        await db.execute(
            select(SessionService.id, BrowserSession.sid)
            .join(BrowserSession, BrowserSession.id == SessionService.session_id)
            .where(
                SessionService.service_id == service.id,
                BrowserSession.account_id == account.id,
                BrowserSession.ended_at.is_(None),
            )
        )
    ).all()
    if not sessions:
        return []
    await db.execute(
        delete(SessionService).where(SessionService.id.in_([r.id for r in sessions]))
    )
    if not service.backchannel_logout_uri or service.disabled_at is not None:
        return []  # a disabled service is sent nothing about anyone, a logout neither
    return [
        LogoutNotice(
            service.client_id,
            service.backchannel_logout_uri,
            logout_token(keys, issuer, service, account.sub, r.sid),
        )
        for r in sessions
    ]


async def cancel(
    db: AsyncSession, keys: KeyRing, issuer: str, service: Service, sub: str
) -> tuple[Link, list[LogoutNotice]] | None:
    """The service reports that it cancelled its own account for ``sub``. None when the person
    is not linked to it (or unknown)."""
    found = await link_of(db, service.id, sub, lock=True)
    if found is None:
        return None
    link, account = found
    was_active = link.is_active
    logouts = await end(db, keys, issuer, link, account, service, LinkStatus.CANCELLED)
    if was_active:
        notices.add_scim(db, service, account.id, account.sub, "deactivate")
    return link, logouts


async def unlink(
    db: AsyncSession, keys: KeyRing, issuer: str, account: Account, client_id: str
) -> list[LogoutNotice] | None:
    """The person unlinks the service ``client_id`` at the hub, and the service is told. None
    when they have no active link to it."""
    row = (
        await db.execute(
            select(Link, Service)
            .join(Service, Service.id == Link.service_id)
            .where(Link.account_id == account.id, Service.client_id == client_id)
            .with_for_update(of=Link)
            .execution_options(populate_existing=True)
        )
    ).first()
    if row is None or not row[0].is_active:
        return None
    link, service = row
    now = utcnow()
    logouts = await end(db, keys, issuer, link, account, service, LinkStatus.REVOKED, now=now)
    notice = LinkRevoked(
        id=notices.new_notice_id(),
        timestamp=notices.timestamp(now),
        data=LinkRevokedData(sub=account.sub, revoked_at=notices.timestamp(now)),
    )
    notices.add(db, service, account.id, account.sub, notice)
    return logouts


async def held_accounts(db: AsyncSession, account_id: int) -> list[HeldAccount]:
    """Every service the person linked, oldest first, with its own cancellation route."""
    rows = await db.execute(
        select(
            Link.status,
            Service.name,
            Service.client_id,
            Service.cancellation_url,
            Service.cancellation_instructions,
        )
        .join(Service, Service.id == Link.service_id)
        .where(Link.account_id == account_id)
        .order_by(Link.created_at, Link.id)
    )
    return [
        HeldAccount(name, client_id, status, url, instructions)
        for status, name, client_id, url, instructions in rows
    ]
