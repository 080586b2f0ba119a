"""Random secrets and their stored form. Every bearer secret the hub hands out (tokens,
codes, session cookies, mailed links, client secrets) is 256 bits of randomness and is
stored only as its SHA-256 digest: high-entropy secrets need no slow hash, and a leaked
table yields nothing usable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def new_client_id() -> str:
    """A public client identifier: 128 random bits in lowercase base32 (26 characters). It
    never starts with ``-`` (command lines), and is valid in URLs and Kafka topic names."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
