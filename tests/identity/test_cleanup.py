"""Expired protocol records are removed; live ones, and what reuse detection needs, stay."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update

from identity.appkeys import DB
from identity.db.cleanup import purge_expired
from identity.db.models import (
    AuthorizationCode,
    BrowserSession,
    DPoPProof,
    Interaction,
    Token,
    utcnow,
)
from tests.support import Browser, Hub, RelyingParty, sign_in_through


async def count(hub: Hub, model: type) -> int:
    async with hub.app[DB]() as db:
        return await db.scalar(select(func.count()).select_from(model)) or 0


async def test_purge_removes_exactly_what_expired(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    token, _ = await sign_in_through(rp, browser)
    refreshed = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert refreshed.status_code == 200
    await browser.go((await rp.start())[0])  # an interaction-free authorization: a second code
    pending = Browser(hub)
    await pending.go((await rp.start())[0])  # a stranger's browser: a pending interaction
    await pending.aclose()
    assert await count(hub, Interaction) == 1
    assert await count(hub, Token) == 2

    now = utcnow()
    async with hub.app[DB].begin() as db:
        nothing = await purge_expired(db, throttle_window=900, now=now)
    assert nothing["tokens"] == 0 and nothing["interactions"] == 0 and nothing["browser_sessions"] == 0

    later = now + dt.timedelta(days=2)
    async with hub.app[DB].begin() as db:
        # The first token's access part has expired, its rotated refresh part has not: it stays.
        counts = await purge_expired(db, throttle_window=900, now=later)
    assert counts["interactions"] == 1
    assert counts["authorization_codes"] >= 1
    assert counts["tokens"] == 0
    assert await count(hub, Token) == 2

    async with hub.app[DB].begin() as db:
        await db.execute(update(BrowserSession).values(expires_at=later - dt.timedelta(seconds=1)))
        counts = await purge_expired(db, throttle_window=900, now=now + dt.timedelta(days=31))
    assert counts["tokens"] == 2
    assert counts["browser_sessions"] == 1
    assert await count(hub, AuthorizationCode) == 0


async def test_used_dpop_proofs_are_kept_while_they_could_be_replayed(hub: Hub) -> None:
    now = utcnow()
    async with hub.app[DB].begin() as db:
        db.add(DPoPProof(jti_hash="a" * 64, expires_at=now - dt.timedelta(seconds=1)))
        db.add(DPoPProof(jti_hash="b" * 64, expires_at=now + dt.timedelta(seconds=60)))
    async with hub.app[DB].begin() as db:
        counts = await purge_expired(db, throttle_window=900, now=now)
    assert counts["dpop_proofs"] == 1
    assert await count(hub, DPoPProof) == 1
