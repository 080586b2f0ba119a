"""CSRF protection for every form: the signed double-submit cookie pattern (OWASP).

A random value lives in an HttpOnly, SameSite=Lax cookie; forms carry its HMAC under the
hub's secret. A POST is accepted only when the form's token is the HMAC of the cookie."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web
from multidict import MultiDictProxy

from identity.web.appkeys import SECRET, SETTINGS

COOKIE = "osi_csrf"
FIELD = "csrf_token"
_NONCE = web.RequestKey("csrf_nonce", str)


class CsrfError(web.HTTPForbidden):
    """The form's CSRF token is missing or does not match."""


def _sign(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, b"csrf|" + nonce.encode(), hashlib.sha256).hexdigest()


def token_for(request: web.Request) -> str:
    """The token to embed in a form rendered for this request (sets the cookie if new)."""
    nonce = request.get(_NONCE) or request.cookies.get(COOKIE)
    if not nonce or len(nonce) > 100:
        nonce = secrets.token_urlsafe(24)
    request[_NONCE] = nonce
    return _sign(request.config_dict[SECRET], nonce)


def set_cookie(request: web.Request, response: web.StreamResponse) -> None:
    nonce = request.get(_NONCE)
    if nonce and nonce != request.cookies.get(COOKIE):
        response.set_cookie(
            COOKIE,
            nonce,
            httponly=True,
            samesite="Lax",
            secure=request.config_dict[SETTINGS].secure_cookies,
            path="/",
        )


async def checked_form(request: web.Request) -> MultiDictProxy[str]:
    """Read a POSTed form and verify its CSRF token; raise 403 otherwise."""
    form = await request.post()
    nonce = request.cookies.get(COOKIE, "")
    sent = form.get(FIELD)
    if not nonce or not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), _sign(request.config_dict[SECRET], nonce).encode()):
        raise CsrfError()
    return form  # type: ignore[return-value]
