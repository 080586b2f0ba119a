"""The public keys of services that authenticate with ``private_key_jwt`` (RFC 7523, OIDC Core 9).

A service registers its keys inline (a JWK Set) or where it publishes them (``jwks_uri``).
Published keys are fetched through the hub's outbound policy (``identity.outbound``: public
addresses only, a timeout, a bounded answer), kept per process for
``ONESIGNIN_JWKS_URI_CACHE_TTL`` seconds, and fetched again at once when an assertion names a
key id the hub has not seen (a service rotating its key), at most once per
``ONESIGNIN_JWKS_URI_REFETCH_INTERVAL`` per service, so that assertions with made-up key ids
cannot make the hub hammer a service.

Fetching is asynchronous and authlib is not: the token, revocation and introspection handlers
call :func:`prepare` before entering authlib, and inside it :meth:`ClientKeys.keys_for` only
reads what is held."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity import outbound
from identity.db.models import Service

__all__ = ["ASSERTION_TYPE", "BadKeys", "ClientKeys", "MAX_JWKS_BYTES", "check_jwks", "ensure", "fetcher", "prepare", "unverified_subject"]

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The largest JWK Set accepted, inline or fetched.
MAX_JWKS_BYTES = 64 * 1024
#: Key members that only a private key has (RFC 7518 section 6).
_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class BadKeys(ValueError):
    """A JWK Set that cannot be a service's public keys; the message says why."""


def check_jwks(jwks: Any) -> dict[str, Any]:
    """``jwks`` if it is a JWK Set of public signing keys (RSA, EC or OKP), else :class:`BadKeys`."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise BadKeys('a JWK Set is a JSON object {"keys": [...]} with at least one key')
    if len(json.dumps(jwks)) > MAX_JWKS_BYTES:
        raise BadKeys(f"the JWK Set is larger than {MAX_JWKS_BYTES} bytes")
    for key in jwks["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC", "OKP"):
            raise BadKeys("every key must be an RSA, EC or OKP public key")
        if _PRIVATE_MEMBERS & set(key):
            raise BadKeys("the JWK Set holds private key material: register public keys only")
        if key.get("use", "sig") != "sig":
            raise BadKeys("keys must be signing keys (use: sig)")
    try:
        KeySet.import_key_set(jwks)
    except (JoseError, ValueError, TypeError) as exc:
        raise BadKeys(f"not a valid JWK Set ({exc.__class__.__name__})") from None
    return jwks


def unverified_subject(assertion: str) -> tuple[str, str | None] | None:
    """The ``sub`` (client_id) and header ``kid`` of a client assertion, read without checking
    anything: only to know which keys to have ready before it is verified."""
    try:
        obj = extract_compact(assertion.encode())
        claims = json.loads(obj.payload)
        kid = obj.headers().get("kid")
    except (JoseError, ValueError, TypeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        return None
    return claims["sub"], kid if isinstance(kid, str) else None


@dataclass(frozen=True)
class _Held:
    uri: str
    keys: KeySet
    kids: frozenset[str]
    fetched_at: float


Fetch = Callable[[str], Awaitable[dict[str, Any]]]


class ClientKeys:
    """The JWK Sets fetched from services' ``jwks_uri``, per process."""

    def __init__(self, *, ttl: float, refetch_interval: float) -> None:
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Services known to publish no jwks_uri (inline keys, another method, or none at all),
        #: and since when: their assertions need no read before authlib runs.
        self._no_uri: dict[str, float] = {}

    def keys_for(self, client: Any) -> KeySet | None:
        """The keys an assertion of ``client`` is verified with (None: none are known)."""
        if client.jwks is not None:
            return KeySet.import_key_set(client.jwks)
        held = self._held.get(client.client_id)
        if held is None or held.uri != client.jwks_uri:
            return None
        return held.keys

    def has_no_uri(self, client_id: str) -> None:
        if len(self._no_uri) > 10_000:
            self._no_uri.clear()
        self._no_uri[client_id] = time.monotonic()

    def needs_fetch(self, client_id: str, kid: str | None, uri: str | None = None) -> bool:
        held = self._held.get(client_id)
        now = time.monotonic()
        if uri is None and held is None and now - self._no_uri.get(client_id, -self.ttl - 1) < self.ttl:
            return False
        if held is None or (uri is not None and held.uri != uri) or now - held.fetched_at >= self.ttl:
            return True
        return kid is not None and kid not in held.kids and now - held.fetched_at >= self.refetch_interval

    async def refresh(self, client_id: str, uri: str, kid: str | None, fetch: Fetch) -> None:
        """Fetch the service's keys if they are missing, stale, or lack ``kid``. A failed fetch
        keeps what was held (the assertion then fails if it needed the new keys)."""
        lock = self._locks.setdefault(client_id, asyncio.Lock())
        async with lock:
            if not self.needs_fetch(client_id, kid, uri):
                return  # another request fetched them meanwhile
            try:
                jwks = check_jwks(await fetch(uri))
                keys = KeySet.import_key_set(jwks)
            except Exception as exc:  # noqa: BLE001 - any failure of a service's endpoint is the service's
                log.warning("could not fetch the jwks_uri of service %s: %s", client_id, exc.__class__.__name__)
                # Keep what was held (or nothing), and do not try again before the refetch interval.
                held = self._held.get(client_id)
                if held is None or held.uri != uri:
                    held = _Held(uri, KeySet([]), frozenset(), 0.0)
                self._held[client_id] = _Held(uri, held.keys, held.kids, time.monotonic())
                return
            kids = frozenset(k["kid"] for k in jwks["keys"] if isinstance(k.get("kid"), str))
            if len(self._held) > 10_000:
                self._held.clear()
            self._held[client_id] = _Held(uri, keys, kids, time.monotonic())


def fetcher(http: aiohttp.ClientSession, timeout: float) -> Fetch:
    """How a JWK Set is fetched: GET through the outbound session, 200 and JSON, bounded."""

    async def fetch(uri: str) -> dict[str, Any]:
        got = await outbound.get(http, uri, timeout=aiohttp.ClientTimeout(total=timeout), limit=MAX_JWKS_BYTES)
        if got.status != 200:
            raise BadKeys(f"jwks_uri answered {got.status}")
        if not got.complete:
            raise BadKeys(f"jwks_uri answered more than {MAX_JWKS_BYTES} bytes")
        return json.loads(got.body)

    return fetch


async def prepare(keys: ClientKeys, sessions: async_sessionmaker[AsyncSession], form: Any, fetch: Fetch) -> None:
    """Before authlib verifies a client assertion: have the keys of the service it names ready,
    fetching them from its jwks_uri when they are missing, stale or lack the assertion's key id.
    Reads the service in a short session of its own, before the request's unit of work."""
    if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
        return
    found = unverified_subject(form["client_assertion"])
    if found is None:
        return
    await ensure(keys, sessions, *found, fetch)


async def ensure(keys: ClientKeys, sessions: async_sessionmaker[AsyncSession], client_id: str, kid: str | None, fetch: Fetch) -> None:
    """Have the published keys of ``client_id`` ready for a JWT it signed with ``kid`` (a client
    assertion or a request object), fetching them when missing, stale or lacking that key id."""
    if not keys.needs_fetch(client_id, kid):
        return
    async with sessions() as db:
        uri = await db.scalar(select(Service.jwks_uri).where(Service.client_id == client_id))
    if uri:
        await keys.refresh(client_id, uri, kid, fetch)
    else:
        keys.has_no_uri(client_id)
