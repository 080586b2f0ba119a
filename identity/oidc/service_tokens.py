"""Access tokens of the ``client_credentials`` grant: self-contained and MAC-protected.

A member service calls the hub's own API with them, and only the hub reads them, so they need no
public-key signature and no row per token: ``ost.<payload>.<mac>``, where the payload names the
client, scope, issue and expiry times and a token id, and the MAC is HMAC-SHA256 under a key
derived from the hub's secret key. Issuing one costs no database write; revoking one records its
id in ``revoked_service_tokens`` until it would have expired. To clients they stay opaque strings.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from identity.tokens import new_id

PREFIX = "ost."
#: Tokens whose MAC was checked, kept (all dropped at once when full).
READ_CACHE_SIZE = 10_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ServiceToken:
    token_id: str
    client_id: str
    scope: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    #: DPoP (RFC 9449): the thumbprint of the key the token is bound to.
    jkt: str | None = None


class ServiceTokenCodec:
    def __init__(self, secret_key: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"onesignin service tokens v1")
        # Keyed once: each MAC starts from a copy, not from hashing the key anew.
        self._keyed = hmac.new(hkdf.derive(secret_key.encode()), digestmod=hashlib.sha256)
        self._read: dict[str, ServiceToken] = {}

    def _mac(self, payload: str) -> str:
        mac = self._keyed.copy()
        mac.update(payload.encode())
        return _b64(mac.digest())

    def issue(self, client_id: str, scope: str, ttl: int, now: dt.datetime, *, jkt: str | None = None) -> str:
        issued = int(now.timestamp())
        body: dict[str, object] = {"c": client_id, "s": scope, "i": issued, "e": issued + ttl, "j": new_id(12)}
        if jkt is not None:
            body["k"] = jkt
        payload = _b64(orjson.dumps(body))  # compact JSON, as json.dumps with separators=(",", ":")
        return f"{PREFIX}{payload}.{self._mac(payload)}"

    def read(self, token: str) -> ServiceToken | None:
        """The token's contents when its MAC is valid (expiry is the caller's to check). Tokens
        read before are answered from memory: a service presents the same token for its life."""
        if (known := self._read.get(token)) is not None:
            return known
        content = self._verify(token)
        if content is not None:
            if len(self._read) >= READ_CACHE_SIZE:
                self._read.clear()
            self._read[token] = content
        return content

    def _verify(self, token: str) -> ServiceToken | None:
        if not token.startswith(PREFIX) or len(token) > 2048:
            return None
        payload, _, mac = token[len(PREFIX) :].partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            body = orjson.loads(_unb64(payload))
            return ServiceToken(
                token_id=str(body["j"]),
                client_id=str(body["c"]),
                scope=str(body["s"]),
                issued_at=dt.datetime.fromtimestamp(int(body["i"]), dt.UTC),
                expires_at=dt.datetime.fromtimestamp(int(body["e"]), dt.UTC),
                jkt=str(body["k"]) if "k" in body else None,
            )
        except (ValueError, KeyError, TypeError):
            return None
