"""The hub's cookies: their names and the attributes each carries, in one place.

Every cookie is HttpOnly. Under an https issuer each is Secure and carries a name prefix the
browser enforces (RFC 6265bis 4.1.3): a cookie for the whole site is ``__Host-<name>``, which a
browser accepts only from this very origin, over https, with ``Path=/`` and no ``Domain``, so a
sibling subdomain of the group or a network attacker on plain http can neither plant nor
overwrite it; a cookie scoped to a path (an interaction, the console) is ``__Secure-<name>``,
accepted over https only. On a loopback http issuer (development) the names are plain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from identity.appkeys import SETTINGS

#: Longest cookie value the hub ever sets; anything longer is not one of its cookies.
MAX_VALUE = 400


@dataclass(frozen=True)
class Cookie:
    base: str
    #: ``/`` for the whole site (``__Host-``), or a path prefix (``__Secure-``).
    scope: Literal["site", "path"] = "site"
    samesite: Literal["Lax", "Strict"] = "Lax"

    def name(self, request: web.Request) -> str:
        if not request.config_dict[SETTINGS].secure_cookies:
            return self.base
        return ("__Host-" if self.scope == "site" else "__Secure-") + self.base

    def read(self, request: web.Request) -> str | None:
        value = request.cookies.get(self.name(request))
        return value if value and len(value) <= MAX_VALUE else None

    def set(
        self, request: web.Request, response: web.StreamResponse, value: str, *, path: str = "/", max_age: int | None = None
    ) -> None:
        if (path == "/") != (self.scope == "site"):
            raise ValueError(f"cookie {self.base} is {self.scope}-scoped; path {path!r} does not fit")
        response.set_cookie(
            self.name(request),
            value,
            httponly=True,
            samesite=self.samesite,
            secure=request.config_dict[SETTINGS].secure_cookies,
            path=path,
            max_age=max_age,
        )

    def clear(self, request: web.Request, response: web.StreamResponse, *, path: str = "/") -> None:
        secure = request.config_dict[SETTINGS].secure_cookies
        response.del_cookie(self.name(request), path=path, secure=secure, httponly=True, samesite=self.samesite)


#: The person's hub session (``identity.web.browser``).
SESSION = Cookie("osi_session")
#: The accounts this browser signed in to before (``identity.accounts.devices``), for a year.
DEVICE = Cookie("osi_device")
#: The CSRF nonce (``identity.web.csrf``); forms carry its HMAC, bound to the session.
CSRF = Cookie("osi_csrf")
#: Binds an authorization request's interaction to the browser, scoped to ``/i/{uid}``.
INTERACTION = Cookie("osi_interaction", scope="path")
#: A staff member's console session, scoped to ``/support``.
CONSOLE = Cookie("osi_console", scope="path", samesite="Strict")
#: A console sign-in under way (state, nonce, PKCE verifier, sealed), scoped to ``/support``.
CONSOLE_LOGIN = Cookie("osi_console_login", scope="path")
#: A password sign-in waiting for its second factor (the account, sealed, for five minutes).
SECOND_FACTOR = Cookie("osi_second_factor", samesite="Strict")
#: A passkey ceremony under way (its challenge, purpose and account, sealed, for five minutes).
PASSKEY = Cookie("osi_passkey", samesite="Strict")
#: The language the person picked with the switcher on the pages, for a year.
LANGUAGE = Cookie("osi_lang")
