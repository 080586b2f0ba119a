"""CSRF protection for the console's forms, bound to the console session.

A console form carries ``HMAC(hub secret, "console-csrf|" + digest of the session's secret)``:
only a page rendered for that very console session (``totp`` stage or ``active``) has it, so a
token obtained elsewhere at the hub, or planted through the hub's shared ``osi_csrf`` cookie,
opens nothing here. Every console POST handler reads its form through :func:`checked_form`."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web
from multidict import MultiDictProxy

from identity.appkeys import SECRET
from identity.tokens import digest
from identity.web.cookies import CONSOLE
from identity.web.csrf import FIELD, CsrfError, same_origin


def _token(request: web.Request, secret: str) -> str:
    return hmac.new(request.config_dict[SECRET], b"console-csrf|" + digest(secret).encode(), hashlib.sha256).hexdigest()


def _secret(request: web.Request) -> str | None:
    secret = CONSOLE.read(request)
    return secret if secret and len(secret) <= 100 else None


def token_for(request: web.Request) -> str:
    """The token for a form on this page; empty without a console session (its form opens nothing)."""
    secret = _secret(request)
    return _token(request, secret) if secret else ""


async def checked_form(request: web.Request) -> MultiDictProxy[str]:
    """Read a POSTed console form and verify its token against the console session; 403 otherwise."""
    if not same_origin(request):
        raise CsrfError()
    form = await request.post()
    secret = _secret(request)
    sent = form.get(FIELD)
    if not secret or not isinstance(sent, str):
        raise CsrfError()
    if not hmac.compare_digest(sent.encode(), _token(request, secret).encode()):
        raise CsrfError()
    return form  # type: ignore[return-value]
