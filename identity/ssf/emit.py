"""The SETs a change calls for, written in the caller's transaction (the outbox pattern of every
notice): one ``notices`` row per service that is linked to the person (an active link), has a
stream that is not disabled, and asked for the event type. ``ssf`` rows are pushed by the sync
worker's notice engine; ``ssf_poll`` rows wait for the service to poll them.

Services that may not see the person's email (no ``email`` scope on the link) never hear of a
change of it. Everyone else is named by ``iss_sub``: the hub's issuer and the ``sub`` the
service knows."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Account, Link, Notice, Passkey, SecondFactor, Service, SsfStream, utcnow
from identity.oidc import scopes
from identity.ssf import events, sets
from identity.ssf.events import Event, delivered
from identity.ssf.streams import PUSH

CHANNELS = ("ssf", "ssf_poll")


def channel(stream: SsfStream) -> str:
    return "ssf" if stream.delivery_method == PUSH else "ssf_poll"


def _add(db: AsyncSession, stream: SsfStream, account_id: int | None, key: str, event: Event, claims: dict[str, object], now: dt.datetime) -> None:
    db.add(
        Notice(
            service_id=stream.service_id,
            account_id=account_id,
            channel=channel(stream),
            event_type=event.name,
            message_id=str(claims["jti"]),
            key=key,
            body=sets.body(claims),
            created_at=now,
            next_attempt_at=now,
        )
    )


async def emit(db: AsyncSession, account_id: int, event: Event, *, now: dt.datetime | None = None) -> int:
    """Queue ``event`` about the account for every service that should hear of it; how many SETs."""
    now = now or utcnow()
    rows = (
        await db.execute(
            select(SsfStream, Service.client_id, Link.scope, Account.sub)
            .join(Service, Service.id == SsfStream.service_id)
            .join(Link, Link.service_id == SsfStream.service_id)
            .join(Account, Account.id == Link.account_id)
            .where(Link.account_id == account_id, Link.is_active, SsfStream.status != "disabled")
            .order_by(SsfStream.service_id)
        )
    ).all()
    made = 0
    for stream, client_id, scope, sub in rows:
        if event.uri not in delivered(stream.events_requested):
            continue
        if event.needs_email and "email" not in scopes.split(scope):
            continue
        subject = {"format": "email", "email": event.email_subject} if event.email_subject else {"format": "iss_sub", "sub": sub}
        _add(db, stream, account_id, sub, event, sets.claims(event, client_id=client_id, subject=subject, at=now), now)
        made += 1
    return made


async def verification(db: AsyncSession, stream: SsfStream, client_id: str, event: Event, *, now: dt.datetime | None = None) -> None:
    """The verification event a receiver asked for (SSF 1.0 section 8.1.4): about the stream itself."""
    now = now or utcnow()
    subject = {"format": "opaque", "id": stream.stream_id}
    _add(db, stream, None, stream.stream_id, event, sets.claims(event, client_id=client_id, subject=subject, at=now), now)


async def two_factors(db: AsyncSession, account_id: int) -> bool:
    """Whether the person can sign in with two factors (``identity.accounts.factors.enrolled``,
    asked here without importing the modules that call :func:`credential_changed`)."""
    app = exists().where(SecondFactor.account_id == account_id, SecondFactor.confirmed_at.is_not(None))
    keys = exists().where(Passkey.account_id == account_id)
    return bool(await db.scalar(select(app | keys)))


async def credential_changed(
    db: AsyncSession,
    account_id: int,
    credential_type: events.CredentialType,
    change_type: events.ChangeType,
    *,
    had_two_factors: bool,
    initiator: events.Initiator = "user",
) -> None:
    """A second factor added or removed (the change already flushed): a credential-change, and
    an assurance-level-change when the person gained their first second factor or lost their last."""
    now = utcnow()
    await emit(db, account_id, events.credential_change(now, credential_type, change_type, initiator), now=now)
    await db.flush()
    now_two = await two_factors(db, account_id)
    if now_two != had_two_factors:
        await emit(db, account_id, events.assurance_level_change(now, two_factors=now_two, initiator=initiator), now=now)
