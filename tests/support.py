"""Test helpers: the running hub, a cookie-keeping browser that submits the hub's real forms,
and a relying party built on authlib's own OAuth client."""

from __future__ import annotations

import asyncio
import html
import os
import re
import time
import secrets
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest

import httpx2
from aiohttp import web
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import KeySet

from identity import admin
from identity.appkeys import CIPHER, DB, HASHER, MAILER
from identity.settings import Settings

PASSWORD = "correct horse battery staple"

_INPUT = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.IGNORECASE | re.DOTALL)



T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout: float = 30.0, what: str = "the condition") -> T:
    """Ask ``probe`` again, a moment apart, until what it returns is true (a row settled, a
    metric reached), and return that; fail with the last answer if ``timeout`` seconds pass."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await probe()
        if found:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{what} did not happen within {timeout:.0f} s (last: {found!r})"
        await asyncio.sleep(0.05)


def until(probe: Callable[[], T], *, timeout: float = 30.0, what: str = "the condition") -> T:
    """:func:`eventually` for tests that are not coroutines (a process started as a program)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s (last: {found!r})"
        time.sleep(0.05)


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (a server not listening yet does not)."""
    try:
        return httpx2.get(url).status_code == 200
    except httpx2.TransportError:
        return False


#: For a module whose tests check what the database plays no part in (a request's validation
#: before anything is stored, a page's wording, a form's CSRF check): SQLite alone, the
#: embedded default. Each dialect-specific path (the token endpoint's and the sign-in's
#: statements on Postgres, the throttle's upserts, the sync tables) is run on both databases by
#: the tests of what it does; running these twice would only double their cost.
SQLITE_ALONE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

#: The end-to-end tests run each topology on the database it is run with; the statements they
#: reach are run on both databases by the tests of what each does. The embedded default (`serve`
#: with its own broker, the pages in a browser): SQLite.
EMBEDDED_DEFAULT = SQLITE_ALONE

#: The production topology (the hub, `relay` and `worker` as processes of their own, a broker run
#: apart, the demo services joining a running hub): Postgres, or SQLite where
#: ``ONESIGNIN_TEST_DATABASE_URL`` names no Postgres to run it on.
PRODUCTION_TOPOLOGY = pytest.mark.parametrize(
    "database_url", ["postgres" if os.environ.get("ONESIGNIN_TEST_DATABASE_URL") else "sqlite"], indirect=True
)


@dataclass
class Form:
    action: str
    fields: dict[str, str]


def forms(page: str) -> list[Form]:
    found = []
    for attrs, body in _FORM.findall(page):
        action = html.unescape(dict(_ATTR.findall(attrs)).get("action", ""))
        fields = {}
        for tag in _INPUT.findall(body):
            a = {k: html.unescape(v) for k, v in _ATTR.findall(tag)}
            if "name" in a and a.get("type") in ("hidden", None, "text", "email", "password", "date", "tel"):
                fields[a["name"]] = a.get("value", "")
            elif "name" in a and a.get("type") == "checkbox" and re.search(r"\bchecked\b", tag):
                fields[a["name"]] = "on"
        found.append(Form(action, fields))
    return found


def form(page: str, action: str) -> Form:
    for f in forms(page):
        if f.action == action or f.action.startswith(action):
            return f
    raise AssertionError(f"no form posting to {action!r} in page:\n{page[:2000]}")


@dataclass
class Hub:
    settings: Settings
    app: web.Application
    url: str

    async def add_service(self, **kwargs: Any) -> admin.NewService:
        kwargs.setdefault("name", "Store")
        kwargs.setdefault("redirect_uris", ["http://127.0.0.1:9/callback"])
        kwargs.setdefault("cipher", self.app[CIPHER])
        async with self.app[DB].begin() as db:
            return await admin.add_service(db, **kwargs)

    async def add_user(self, email: str = "ann@example.com", password: str = PASSWORD, **kwargs: Any) -> str:
        kwargs.setdefault("given_name", "Ann")
        kwargs.setdefault("family_name", "Example")
        async with self.app[DB].begin() as db:
            account = await admin.add_user(db, self.settings, self.app[HASHER], email=email, password=password, **kwargs)
        for message in account.mail:
            await self.app[MAILER].send(message)
        return account.sub

    async def userinfo(self, access_token: str | None, *, method: str = "GET") -> httpx2.Response:
        """Call the UserInfo endpoint with ``access_token`` as a Bearer token (or with no token)."""
        headers = {"Authorization": f"Bearer {access_token}"} if access_token is not None else {}
        async with httpx2.AsyncClient(base_url=self.url, timeout=30) as http:
            return await http.request(method, "/userinfo", headers=headers)


class Browser:
    """A person's browser: keeps cookies, follows redirects inside the hub, submits forms."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.http = httpx2.AsyncClient(base_url=hub.url, follow_redirects=False, timeout=30)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def go(self, url: str, *, method: str = "GET", data: dict[str, str] | None = None) -> httpx2.Response:
        """Request ``url`` and follow redirects while they stay on the hub; return the last response."""
        response = await self.http.request(method, url, data=data)
        while response.status_code in (301, 302, 303, 307) and "location" in response.headers:
            target = urljoin(str(response.url), response.headers["location"])
            if not target.startswith(self.hub.url):
                return response
            response = await self.http.get(target)
        return response

    async def submit(self, page: httpx2.Response, action: str, **values: str) -> httpx2.Response:
        f = form(page.text, action)
        return await self.go(f.action, method="POST", data=f.fields | values)

    async def sign_in(self, email: str = "ann@example.com", password: str = PASSWORD) -> httpx2.Response:
        page = await self.go("/sign-in")
        return await self.submit(page, "/sign-in", email=email, password=password)


async def confirm_mailed_link(hub: Hub, browser: Browser, to: str, path: str) -> httpx2.Response:
    """Open the newest mailed link to ``path`` sent to ``to`` and press its confirm button."""
    from identity.mail import read_outbox

    mails = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == to]
    links = [w for m in mails for w in m.get_content().split() if f"{path}?token=" in w]
    assert links, f"no {path} link mailed to {to}"
    page = await browser.go(links[-1][len(hub.url) :])
    return await browser.submit(page, path)


def location_params(response: httpx2.Response) -> dict[str, str]:
    """Query parameters of a redirect's Location (single values)."""
    return query_params(response.headers["location"])


def query_params(url: str) -> dict[str, str]:
    """Query parameters of a URL (single values)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


@dataclass
class RelyingParty:
    """A member service, as an OAuth client that nobody here wrote: authlib's."""

    hub: Hub
    client_id: str
    #: None for a public client (it sends its client_id alone).
    client_secret: str | None
    redirect_uri: str = "http://127.0.0.1:9/callback"
    scope: str = "openid profile email offline_access"
    metadata: dict[str, Any] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> AsyncOAuth2Client:
        kwargs.setdefault("scope", self.scope)
        kwargs.setdefault("timeout", 30)  # a loaded machine is slow, not broken
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            **kwargs,
        )

    async def discover(self) -> dict[str, Any]:
        async with httpx2.AsyncClient(timeout=30) as http:
            self.metadata = (await http.get(f"{self.hub.url}/.well-known/openid-configuration")).json()
        return self.metadata

    async def start(self, **params: str) -> tuple[str, dict[str, str]]:
        """The authorization URL and what the RP keeps (state, nonce, code_verifier)."""
        if not self.metadata:
            await self.discover()
        verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(16)
        async with self.client() as client:
            url, state = client.create_authorization_url(
                self.metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce, **params
            )
        return url, {"state": state, "nonce": nonce, "code_verifier": verifier}

    async def finish(self, callback_url: str, kept: dict[str, str]) -> dict[str, Any]:
        """Exchange the code at the token endpoint (authlib checks state and iss)."""
        async with self.client(state=kept["state"]) as client:
            return dict(
                await client.fetch_token(
                    self.metadata["token_endpoint"],
                    authorization_response=callback_url,
                    code_verifier=kept["code_verifier"],
                )
            )

    async def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        auth: str | None = "client_secret_basic",
        headers: dict[str, str] | None = None,
    ) -> httpx2.Response:
        """A raw form POST to one of the hub's endpoints (``/token``, ``/revoke``, ``/introspect``),
        authenticated as this client with ``client_secret_basic``, ``client_secret_post``, as a
        public client (``auth="none"``: its client_id alone), or (``auth=None``) not at all."""
        data = dict(data or {})
        basic = None
        if auth == "client_secret_basic":
            basic = httpx2.BasicAuth(self.client_id, self.client_secret or "")
        elif auth == "client_secret_post":
            data |= {"client_id": self.client_id, "client_secret": self.client_secret}
        elif auth == "none":
            data |= {"client_id": self.client_id}
        elif auth is not None:
            raise ValueError(auth)
        async with httpx2.AsyncClient(base_url=self.hub.url, timeout=30) as http:
            return await http.post(path, data=data, auth=basic, headers=headers)

    async def exchange(
        self,
        callback_url: str,
        kept: dict[str, str],
        *,
        auth: str | None = "client_secret_basic",
        headers: dict[str, str] | None = None,
        **overrides: str | None,
    ) -> httpx2.Response:
        """The token request for the code in ``callback_url``, sent raw. Keyword arguments
        override its parameters; ``None`` leaves one out."""
        data: dict[str, str | None] = {
            "grant_type": "authorization_code",
            "code": query_params(callback_url)["code"],
            "redirect_uri": self.redirect_uri,
            "code_verifier": kept["code_verifier"],
        }
        data |= overrides
        return await self.post("/token", {k: v for k, v in data.items() if v is not None}, auth=auth, headers=headers)

    async def validate_id_token(self, token: dict[str, Any], nonce: str) -> CodeIDToken:
        async with httpx2.AsyncClient(timeout=30) as http:
            jwks = (await http.get(self.metadata["jwks_uri"])).json()
        decoded = jwt.decode(token["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256", "ES256"])
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            options={"iss": {"essential": True, "value": self.hub.url}, "aud": {"essential": True, "value": self.client_id}},
            params={"nonce": nonce, "client_id": self.client_id, "access_token": token["access_token"]},
        )
        claims.validate()
        return claims


async def sign_in_through(rp: RelyingParty, browser: Browser, **params: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The whole code flow as a person does it: sign in and consent when asked. Returns the token
    response and what the RP kept."""
    callback, kept = await authorize_through(rp, browser, **params)
    return await rp.finish(callback, kept), kept


async def authorize_through(rp: RelyingParty, browser: Browser, **params: str) -> tuple[str, dict[str, str]]:
    """The front half of the code flow: sign in and consent when asked. Returns the callback URL
    (its code not yet exchanged) and what the RP kept."""
    url, kept = await rp.start(**params)
    page = await browser.go(url)
    if page.status_code == 200 and "/login" in page.text and 'name="password"' in page.text:
        page = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    if page.status_code == 200 and "/consent" in page.text:
        f = form(page.text, "/i/")
        page = await browser.go(f.action, method="POST", data=f.fields | {"decision": "allow"})
    assert page.status_code == 302, page.text[:2000]
    callback = page.headers["location"]
    assert callback.startswith(rp.redirect_uri), callback
    return callback, kept


class LocalServer:
    """A small real HTTP server on a loopback address and a port the kernel chose (a native
    app's redirect listener, a service's jwks_uri)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1") -> None:
        self.app = app
        self.host = host
        self.port = 0

    async def __aenter__(self) -> LocalServer:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
