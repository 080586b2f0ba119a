"""Ending a hub session, and OpenID Connect Back-Channel Logout 1.0: a signed logout token
POSTed to every service of the session that registered a ``backchannel_logout_uri`` (none to a
disabled service, which is sent nothing about anyone)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import aiohttp
from joserfc import jwt
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity import outbound
from identity.db.models import (
    Account,
    BrowserSession,
    Service,
    SessionService,
    Token,
    utcnow,
)
from identity.oidc.keys import KeyRing
from identity.ssf import emit, events

log = logging.getLogger(__name__)

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass(frozen=True)
class LogoutNotice:
    client_id: str
    uri: str
    logout_token: str


def logout_token(keys: KeyRing, issuer: str, service: Service, sub: str, sid: str) -> str:
    alg = service.id_token_signed_response_alg or "RS256"
    key = keys.signing_key(alg)
    now = int(utcnow().timestamp())
    claims = {
        "iss": issuer,
        "aud": service.client_id,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "sub": sub,
        "sid": sid,
        "events": {BACKCHANNEL_EVENT: {}},
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "logout+jwt"}, claims, key, algorithms=[alg])


async def end_session(
    db: AsyncSession, keys: KeyRing, issuer: str, session: BrowserSession, *, initiator: events.Initiator = "user", signal: bool = True
) -> list[LogoutNotice]:
    """Mark the session ended; return the logout notices to send once the caller commits. The
    person's linked services with a Shared Signals stream hear of it (a CAEP session-revoked,
    in this transaction) unless ``signal`` is False (the caller tells them once for several)."""
    if session.ended_at is None:
        session.ended_at = utcnow()
        if signal:
            await emit.emit(db, session.account_id, events.session_revoked(session.ended_at, initiator))
    account = await db.get(Account, session.account_id)
    services = (
        await db.scalars(
            select(Service)
            .join(SessionService, SessionService.service_id == Service.id)
            # A disabled service is sent nothing about anyone (``sync.endpoints``), a logout neither.
            .where(SessionService.session_id == session.id, Service.backchannel_logout_uri.is_not(None), Service.disabled_at.is_(None))
        )
    ).all()
    if account is None:
        return []
    return [
        LogoutNotice(s.client_id, s.backchannel_logout_uri, logout_token(keys, issuer, s, account.sub, session.sid))
        for s in services
        if s.backchannel_logout_uri
    ]


async def end_sessions_of(
    db: AsyncSession, keys: KeyRing, issuer: str, account_id: int, *, keep: int | None = None, initiator: events.Initiator = "user"
) -> list[LogoutNotice]:
    """End every live session of an account (but ``keep``), e.g. after its password changed.
    Services hear of it in one session-revoked SET each, however many sessions ended."""
    query = select(BrowserSession).where(BrowserSession.account_id == account_id, BrowserSession.ended_at.is_(None))
    if keep is not None:
        query = query.where(BrowserSession.id != keep)
    notices: list[LogoutNotice] = []
    ended = (await db.scalars(query)).all()
    for session in ended:
        notices.extend(await end_session(db, keys, issuer, session, signal=False))
    if ended:
        await emit.emit(db, account_id, events.session_revoked(utcnow(), initiator))
    return notices


async def revoke_tokens(db: AsyncSession, account_id: int, *, keep_sid: str | None = None) -> None:
    """Revoke the account's tokens at every service (but those of the session ``keep_sid``):
    after a password reset or change, what was issued to other sessions stops working."""
    query = update(Token).where(Token.account_id == account_id, Token.revoked_at.is_(None))
    if keep_sid is not None:
        query = query.where(Token.sid.is_distinct_from(keep_sid))
    await db.execute(query.values(revoked_at=utcnow()))


async def revoke_session_tokens(db: AsyncSession, account_id: int, sid: str) -> None:
    """Revoke the tokens issued through one session (offline refresh tokens too): the person
    signed that session out from their account page."""
    await db.execute(update(Token).where(Token.account_id == account_id, Token.sid == sid, Token.revoked_at.is_(None)).values(revoked_at=utcnow()))


async def send_notices(http: aiohttp.ClientSession, notices: list[LogoutNotice], timeout: float) -> dict[str, bool]:
    """POST each logout token (concurrently) through the hub's ``identity.outbound`` session;
    return which services acknowledged with 200. A notice to an address the outbound policy
    refuses is not sent."""

    async def one(notice: LogoutNotice) -> bool:
        try:
            answer = await outbound.post(
                http,
                notice.uri,
                data={"logout_token": notice.logout_token},
                timeout=aiohttp.ClientTimeout(total=timeout),
            )
        except outbound.AddressNotAllowed:
            log.warning(
                "back-channel logout to %s not sent: its address is not allowed (public addresses only, "
                "and ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS)",
                notice.client_id,
            )
            return False
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("back-channel logout to %s failed: %r", notice.client_id, exc)
            return False
        if answer.status != 200:
            log.warning("back-channel logout to %s answered %s", notice.client_id, answer.status)
        return answer.status == 200

    results = await asyncio.gather(*(one(n) for n in notices))
    return {n.client_id: ok for n, ok in zip(notices, results, strict=True)}
