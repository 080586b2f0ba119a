"""Browsers that have signed in to an account before (OWASP's "device cookies").

After a successful sign-in the browser keeps an entry naming the account: a random nonce and an
HMAC of it with the account's throttle key under the hub's secret. The next time that browser
types the same address, its password checks are counted against the nonce (its own key) instead
of the address's and the client address's: someone who guesses wrong passwords for that address
elsewhere slows down strangers only, never the browser its owner uses. A browser keeps entries for
the last few accounts signed in with it. Nothing is stored at the hub but the counter, under a
digest of the nonce."""

from __future__ import annotations

import hashlib
import hmac

from identity.tokens import digest, new_secret

#: Accounts one browser is remembered for.
MOST = 5
_SEPARATOR = "~"


def _mac(secret: bytes, account_key: str, nonce: str) -> str:
    return hmac.new(secret, f"device|{account_key}|{nonce}".encode(), hashlib.sha256).hexdigest()[:32]


def _entries(cookie: str | None) -> list[tuple[str, str]]:
    found = []
    for entry in (cookie or "").split(_SEPARATOR)[:MOST]:
        nonce, _, mac = entry.partition(".")
        if nonce and mac:
            found.append((nonce, mac))
    return found


def recognised(secret: bytes, cookie: str | None, account_key: str) -> str | None:
    """The throttle key of this browser for the account, when it signed in to it before."""
    for nonce, mac in _entries(cookie):
        if hmac.compare_digest(mac, _mac(secret, account_key, nonce)):
            return "device:" + digest(nonce)
    return None


def remember(secret: bytes, cookie: str | None, account_key: str) -> str | None:
    """The cookie's new value once the browser signed in to the account, or None when it is
    remembered for it already."""
    if recognised(secret, cookie, account_key) is not None:
        return None
    kept = _entries(cookie)
    nonce = new_secret(18)
    entries = [(nonce, _mac(secret, account_key, nonce)), *kept][:MOST]
    return _SEPARATOR.join(f"{n}.{m}" for n, m in entries)
