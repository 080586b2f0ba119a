"""Redirect URIs: which ones a service may register, and whether a requested one matches.

Every redirect URI is compared as an exact string (RFC 9700 section 2.1), with one exception
for native apps (RFC 8252 section 7.3): a loopback IP redirect URI (``http://127.0.0.1/cb``,
``http://[::1]/cb``) matches whatever port the app's listener got from its operating system,
since it cannot know it in advance; its scheme, address, path and query must still match
exactly. Native apps may also register private-use URI schemes (``com.example.app:/callback``,
RFC 8252 section 7.1) and claimed https URIs (section 7.2). ``localhost`` is never treated as
loopback here (section 8.3: it may resolve elsewhere)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["BadRedirectURI", "check", "matches"]

_LOOPBACK = re.compile(r"http://(127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?((?:/|\?)[^#]*)?\Z")
#: Schemes a private-use URI must not be (RFC 8252 section 7.1 asks for a reverse domain name).
_NOT_PRIVATE = {"http", "https", "javascript", "data", "file", "vbscript", "about", "blob"}


class BadRedirectURI(ValueError):
    """A redirect URI that may not be registered; the message says why."""


def _loopback(uri: str) -> tuple[str, str] | None:
    """The address and the path-and-query of a loopback IP redirect URI, ignoring its port."""
    m = _LOOPBACK.match(uri)
    if m is None or (m[2] is not None and not 0 < int(m[2]) < 65536):
        return None
    return m[1], m[3] or "/"


def matches(registered: str, requested: str, *, native: bool) -> bool:
    if requested == registered:
        return True
    if not native:
        return False
    ours = _loopback(registered)
    return ours is not None and ours == _loopback(requested)


def check(uri: str, *, native: bool, what: str = "--redirect-uri") -> str:
    """``uri`` if a service of that kind may register it, else :class:`BadRedirectURI`."""
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        raise BadRedirectURI(f"{what} must not contain a fragment: {uri!r}")
    if any(c.isspace() or ord(c) < 0x20 for c in uri):
        raise BadRedirectURI(f"{what} must not contain spaces or control characters: {uri!r}")
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise BadRedirectURI(f"{what} must be an absolute URL: {uri!r}")
        if scheme == "https":
            return uri
        if native:
            if _loopback(uri) is None:
                raise BadRedirectURI(
                    f"{what} of a native app may use http only on a loopback IP address "
                    f"(http://127.0.0.1/... or http://[::1]/..., any port): {uri!r}"
                )
            return uri
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise BadRedirectURI(f"{what} must use https unless it is a loopback address: {uri!r}")
        return uri
    if not native:
        raise BadRedirectURI(f"{what} must be an absolute http(s) URL: {uri!r}")
    if not scheme or "." not in scheme or scheme in _NOT_PRIVATE or not re.fullmatch(r"[a-z][a-z0-9.+-]*", scheme):
        raise BadRedirectURI(
            f"{what} of a native app must be https, http on a loopback IP address, or a private-use "
            f"scheme named after a domain the app's publisher controls (com.example.app:/callback): {uri!r}"
        )
    return uri
