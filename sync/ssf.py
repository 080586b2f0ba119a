"""Shared Signals push delivery (RFC 8935) for the notice engine: a SET row (channel ``ssf``)
is signed when it is sent, with the hub's signing key of the moment, and POSTed as
``application/secevent+jwt`` to the stream's ``endpoint_url`` with the receiver's
``authorization_header``.

What the answer means (RFC 8935 section 2.2 and 2.3): ``202`` (any 2xx) accepted; ``400`` with
a JSON ``err`` and ``description`` is the receiver's refusal of that SET, final (``rejected``:
a dead letter at once, not retried); anything else is retried on the schedule of every notice
(``Retry-After`` honoured on 429 and 503). A 410 does not disable anything: the stream is the
receiver's to change."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity import outbound
from identity.oidc.keys import KeyRing, load_keys
from identity.sealing import KeyCipher
from identity.settings import Settings
from identity.ssf import sets
from sync.webhooks import UNANSWERED, Outcome, parse_retry_after, unanswered

log = logging.getLogger(__name__)

#: Signing keys are read again this often (a rotation publishes the next key well ahead).
KEYS_REFRESH = 60.0


class SetSigner:
    """Signs SETs with the hub's current key, reading the keys again every ``KEYS_REFRESH`` s."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], cipher: KeyCipher) -> None:
        self.issuer = settings.issuer
        self.sessions = sessions
        self.cipher = cipher
        self._keys: KeyRing | None = None
        self._read_at = -1e9

    async def sign(self, stored: str) -> str:
        now = asyncio.get_running_loop().time()
        if self._keys is None or now - self._read_at > KEYS_REFRESH:
            async with self.sessions() as db:
                self._keys = await load_keys(db, self.cipher)
            self._read_at = now
        return sets.sign(self._keys, self.issuer, stored)


def _refusal(body: bytes) -> str | None:
    """The receiver's ``err: description`` from a 400 answer, or None if it is not one."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("err"), str):
        return None
    return f"{answer['err']}: {answer.get('description') or ''}".strip(": ")[:300]


async def post(http: aiohttp.ClientSession, url: str, authorization: str | None, token: str, *, timeout: aiohttp.ClientTimeout) -> Outcome:
    headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    try:
        answer = await outbound.post(http, url, data=token.encode(), headers=headers, timeout=timeout)
    except UNANSWERED as exc:
        return unanswered(exc, timeout, whose="the stream's")
    status = answer.status
    if 200 <= status < 300:
        return Outcome("ok", status=status)
    if status == 400 and (refusal := _refusal(answer.body)) is not None:
        return Outcome("rejected", f"refused by the receiver: {refusal}", status=status)
    retry_after = parse_retry_after(answer.headers.get("Retry-After")) if status in (429, 503) else None
    return Outcome("retry", f"HTTP {status}", status=status, retry_after=retry_after)
