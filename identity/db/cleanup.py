"""Removal of protocol records nobody can use any more: expired interactions, codes, mailed
links, throttle counters, used client assertions, DPoP proofs and passkey challenges, tokens and sessions, and the
per-minute sync rollups older than their retention. Run periodically by ``serve``; the caller
commits. (Retention of personal history is a separate, configurable policy.)"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, delete, func, or_
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import (
    AuthorizationCode,
    BrowserSession,
    ClientAssertion,
    DPoPProof,
    EmailToken,
    Interaction,
    PushedRequest,
    RevokedServiceToken,
    SpentChallenge,
    SyncMinute,
    Throttle,
    Token,
    utcnow,
)

# Used codes are kept a day so that a late replay still revokes what the code issued.
CODE_GRACE = dt.timedelta(days=1)
SESSION_GRACE = dt.timedelta(days=1)


#: How long per-minute sync rollups are kept when the caller does not say.
ROLLUP_RETENTION = dt.timedelta(days=8)


async def purge_expired(
    db: AsyncSession, *, throttle_window: float, rollup_retention: dt.timedelta = ROLLUP_RETENTION, now: dt.datetime | None = None
) -> dict[str, int]:
    now = now or utcnow()
    statements = {
        "interactions": delete(Interaction).where(Interaction.expires_at < now),
        "authorization_codes": delete(AuthorizationCode).where(AuthorizationCode.expires_at < now - CODE_GRACE),
        "email_tokens": delete(EmailToken).where(EmailToken.expires_at < now),
        "throttles": delete(Throttle).where(
            func.coalesce(Throttle.locked_until, Throttle.window_start) < now - dt.timedelta(seconds=throttle_window)
        ),
        "revoked_service_tokens": delete(RevokedServiceToken).where(RevokedServiceToken.expires_at < now),
        # A used client assertion is remembered until it expires (single use of its jti).
        "client_assertions": delete(ClientAssertion).where(ClientAssertion.expires_at < now),
        # A used DPoP proof is remembered while its iat is still accepted (single use of its jti).
        "dpop_proofs": delete(DPoPProof).where(DPoPProof.expires_at < now),
        "pushed_requests": delete(PushedRequest).where(PushedRequest.expires_at < now),
        # An answered passkey challenge is remembered until its ceremony would have expired.
        "spent_challenges": delete(SpentChallenge).where(SpentChallenge.expires_at < now),
        # A rotated refresh token must be remembered until it would have expired (reuse detection).
        "tokens": delete(Token).where(
            Token.access_expires_at < now, or_(Token.refresh_expires_at.is_(None), Token.refresh_expires_at < now)
        ),
        "browser_sessions": delete(BrowserSession).where(
            or_(BrowserSession.expires_at < now, and_(BrowserSession.ended_at.is_not(None), BrowserSession.ended_at < now - SESSION_GRACE))
        ),
        # The charts' time series (``sync_minutes``), past ``sync_rollup_retention_days``.
        "sync_minutes": delete(SyncMinute).where(SyncMinute.minute < now - rollup_retention),
    }
    counts = {}
    for name, statement in statements.items():
        counts[name] = (await db.execute(statement)).rowcount or 0
    return counts
