"""CSRF protection for every form: a signed double-submit cookie bound to the session (OWASP),
and a check of where the request came from.

A random value lives in an HttpOnly cookie (``__Host-osi_csrf`` under https); a form carries
``HMAC(secret, nonce | digest of the session cookie)``. Bound to the session, a token is worth
nothing without the very session it was rendered for, so an attacker who manages to plant the
CSRF cookie (from a sibling subdomain, or over plain http) still cannot forge a signed-in
person's request; signing in starts a new session and a new nonce, so every token from before
stops working. Before sign-in there is no session to bind to: there the browser's own word on
where a request came from decides too. A POST is refused when ``Sec-Fetch-Site`` says it came
from another site (or another origin of the same site), or, from a browser that does not send
that header, when ``Origin`` is not the issuer's."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from identity.appkeys import SECRET, SETTINGS
from identity.tokens import digest
from identity.web.cookies import CSRF as NONCE
from identity.web.cookies import SESSION

COOKIE = NONCE.base
FIELD = "csrf_token"
_NONCE = web.RequestKey("csrf_nonce", str)


class CsrfError(web.HTTPForbidden):
    """The form's CSRF token is missing or does not match, or the form came from elsewhere."""


def _sign(secret: bytes, nonce: str, session: str | None) -> str:
    bound = digest(session) if session else ""
    return hmac.new(secret, f"csrf|{nonce}|{bound}".encode(), hashlib.sha256).hexdigest()


def token_for(request: web.Request) -> str:
    """The token to embed in a form rendered for this request (sets the cookie if new)."""
    nonce = request.get(_NONCE) or NONCE.read(request)
    if not nonce or len(nonce) > 100:
        nonce = secrets.token_urlsafe(24)
    request[_NONCE] = nonce
    return _sign(request.config_dict[SECRET], nonce, SESSION.read(request))


def set_cookie(request: web.Request, response: web.StreamResponse) -> None:
    nonce = request.get(_NONCE)
    if nonce and nonce != NONCE.read(request):
        NONCE.set(request, response, nonce)


def same_origin(request: web.Request) -> bool:
    """Whether the browser says this request came from the hub's own pages. A client that says
    nothing either way (no ``Sec-Fetch-Site``, no ``Origin``) is left to the token."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin == _origin(request.config_dict[SETTINGS].issuer)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def checked_form(request: web.Request) -> MultiDictProxy[str]:
    """Read a POSTed form and verify where it came from and its CSRF token; raise 403 otherwise."""
    if not same_origin(request):
        raise CsrfError()
    form = await request.post()
    nonce = NONCE.read(request) or ""
    sent = form.get(FIELD)
    if not nonce or not isinstance(sent, str):
        raise CsrfError()
    expected = _sign(request.config_dict[SECRET], nonce, SESSION.read(request))
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfError()
    return form  # type: ignore[return-value]
