"""Random secrets and their stored form. Every bearer secret the hub hands out (tokens,
codes, session cookies, mailed links, client secrets) is 256 bits of randomness and is
stored only as its SHA-256 digest: high-entropy secrets need no slow hash, and a leaked
table yields nothing usable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def new_client_id() -> str:
    """A public client identifier: 128 random bits in lowercase base32 (26 characters). It
    never starts with ``-`` (command lines), and is valid in URLs and Kafka topic names."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


class RandomPool:
    """Bytes from the system's random source (``os.urandom``, what ``secrets`` uses), read
    :data:`SIZE` at a time and each handed out once: for ids made on every request, where a
    system call per id costs more than the rest of making it. A forked child starts with an empty
    pool of its own, so parent and child never hand out the same bytes."""

    SIZE = 4096

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0

    def take(self, nbytes: int) -> bytes:
        with self._lock:
            if self._at + nbytes > len(self._buffer):
                self._buffer, self._at = os.urandom(max(self.SIZE, nbytes)), 0
            chunk = self._buffer[self._at : self._at + nbytes]
            self._at += nbytes
            return chunk


_pool = RandomPool()


def new_id(nbytes: int = 12) -> str:
    """``nbytes`` random bytes from the pool, URL-safe base64 without padding (as
    ``secrets.token_urlsafe``)."""
    return base64.urlsafe_b64encode(_pool.take(nbytes)).rstrip(b"=").decode()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
