"""A member service as its developer would write it: sign-in through OneSignIn, a name the person
can change, and the person's details kept current from the hub's deliveries.

Nothing here comes from the hub's own code; it uses what any service can install:

* authlib's OAuth client (with httpx2) for the authorization code flow with PKCE S256, ``state``
  and ``nonce``, against the hub's discovery document, and for API calls that refresh the access
  token when it expires;
* joserfc, to check the ID token's signature against the hub's published keys (JWKS), and
  authlib's ``CodeIDToken`` for its claims (``iss``, ``aud``, ``exp``, ``nonce``, ``at_hash``);
* ``standardwebhooks``, to verify every webhook delivery's signature;
* aiokafka, to read the service's own topic with its own consumer group.

Deliveries are state-based and at least once, on two channels, in any order: each carries the
person's whole profile at a version, and the service keeps, per ``sub``, the highest version it
has seen and ignores the rest.

Sessions and profiles live in memory here; a real service keeps them in its own database."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import html
import json
import logging
import re
import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

log = logging.getLogger(__name__)

CALLBACK_PATH = "/oidc/callback"
WEBHOOK_PATH = "/webhooks/onesignin"
#: Where the hub POSTs logout tokens (OpenID Connect Back-Channel Logout 1.0).
BACKCHANNEL_LOGOUT_PATH = "/backchannel-logout"
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
DEFAULT_SCOPE = "openid profile email offline_access"
MAX_SESSIONS = 10_000
EVENT_TYPES = ("profile.updated", "profile.snapshot")


@dataclass(frozen=True)
class MemberConfig:
    """What a member service is told when it is registered, and where it runs."""

    name: str
    #: Where the service is reached, e.g. ``http://127.0.0.1:8001`` (no trailing slash).
    base_url: str
    issuer: str
    client_id: str
    client_secret: str
    #: The ``whsec_`` secret of its webhook (none: the webhook endpoint answers 404).
    webhook_secret: str | None = None
    #: Its own topic, ``onesignin.service.<client_id>.v1`` (none: no Kafka consumer).
    topic: str | None = None
    #: Options for ``AIOKafkaConsumer``, at least ``bootstrap_servers``.
    kafka: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    scope: str = DEFAULT_SCOPE
    colour: str = "#1f5fbf"
    #: Where the service itself calls the hub (discovery, token, keys, userinfo, revocation and
    #: the API), when that is not the issuer's own address: e.g. ``http://proxy:8000`` inside a
    #: container network whose issuer is ``http://127.0.0.1:8000`` on the host. People's browsers
    #: are still sent to the issuer's URLs, and ID tokens must still name the issuer.
    hub_url: str | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_") or "member"

    @property
    def redirect_uri(self) -> str:
        return self.base_url + CALLBACK_PATH

    @property
    def webhook_url(self) -> str:
        return self.base_url + WEBHOOK_PATH

    @property
    def post_logout_redirect_uri(self) -> str:
        """Where the hub sends the browser back after RP-initiated logout."""
        return self.base_url + "/"


# -- The person's details, as this service last received them ---------------------------------


@dataclass
class Known:
    version: int
    profile: dict[str, Any]
    #: The channels that delivered this version, first first: webhook, topic, or an API answer.
    via: list[str]
    at: dt.datetime


@dataclass(frozen=True)
class Received:
    at: dt.datetime
    via: str
    kind: str
    version: int
    applied: bool


class Profiles:
    """Per ``sub``, the highest version seen. An older or equal version changes nothing (it may
    come late, or twice: once on each channel)."""

    def __init__(self) -> None:
        self.known: dict[str, Known] = {}
        self.history: dict[str, deque[Received]] = {}

    def apply(self, sub: str, version: int, profile: dict[str, Any], *, via: str, kind: str) -> bool:
        now = dt.datetime.now(dt.UTC)
        current = self.known.get(sub)
        applied = current is None or version > current.version
        if applied:
            self.known[sub] = Known(version, profile, [via], now)
        elif current is not None and version == current.version and via not in current.via:
            current.via.append(via)
        self.history.setdefault(sub, deque(maxlen=8)).appendleft(Received(now, via, kind, version, applied))
        return applied

    def get(self, sub: str) -> Known | None:
        return self.known.get(sub)


def read_event(payload: Any) -> tuple[str, str, int, dict[str, Any]] | None:
    """``(type, sub, version, profile)`` of a profile delivery, or None for anything else."""
    if not isinstance(payload, dict) or payload.get("type") not in EVENT_TYPES:
        return None
    data = payload.get("data")
    if not isinstance(data, dict):
        return None
    sub, version, profile = data.get("sub"), data.get("version"), data.get("profile")
    if not isinstance(sub, str) or type(version) is not int or not isinstance(profile, dict):
        return None
    return payload["type"], sub, version, profile


# -- Browser sessions ---------------------------------------------------------------------------


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: A sign-in under way: state, nonce and code_verifier.
    pending: dict[str, str] | None = None
    sub: str | None = None
    token: dict[str, Any] | None = None
    flash: str | None = None
    #: The hub session (the ID token's ``sid``) this sign-in came through.
    sid: str | None = None


class Sessions:
    def __init__(self, cookie: str, secure: bool) -> None:
        self.cookie = cookie
        self.secure = secure
        self.store: OrderedDict[str, Session] = OrderedDict()

    def find(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(self.cookie)
        return self.store.get(sid) if sid else None

    def new(self, response: web.StreamResponse, session: Session | None = None) -> Session:
        """A new session id (also after sign-in, so an id planted before it is worthless)."""
        session = session or Session()
        sid = secrets.token_urlsafe(32)
        self.store[sid] = session
        while len(self.store) > MAX_SESSIONS:
            self.store.popitem(last=False)
        response.set_cookie(self.cookie, sid, httponly=True, samesite="Lax", secure=self.secure, path="/")
        return session

    def drop(self, request: web.Request, response: web.StreamResponse) -> None:
        self.store.pop(request.cookies.get(self.cookie, ""), None)
        response.del_cookie(self.cookie, path="/")

    def end(self, *, sid: str | None, sub: str | None) -> int:
        """End the sessions of hub session ``sid``, or (without a ``sid``) every session of
        ``sub``; how many ended."""
        ended = [
            key for key, s in self.store.items()
            if s.sub is not None and (s.sid == sid if sid else s.sub == sub) and (sub is None or s.sub == sub)
        ]
        for key in ended:
            del self.store[key]
        return len(ended)


# -- The hub, as an OpenID Provider and an API --------------------------------------------------


class SignInFailed(Exception):
    """The sign-in did not complete; the message is shown to the person."""


class SignedOut(Exception):
    """The hub no longer accepts this session's tokens."""


#: Endpoints the service calls itself (the others, authorization and end-session, are for browsers).
BACK_CHANNEL = ("token_endpoint", "jwks_uri", "userinfo_endpoint", "revocation_endpoint", "introspection_endpoint")


class HubClient:
    """The hub's discovery document and keys (fetched when first needed), the code flow, and
    calls to its API with the person's access token."""

    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        #: Where this service's own requests to the hub go.
        self.base = (config.hub_url or config.issuer).rstrip("/")
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._lock = asyncio.Lock()

    def client(self, **kwargs: Any) -> AsyncOAuth2Client:
        c = self.config
        return AsyncOAuth2Client(
            client_id=c.client_id,
            client_secret=c.client_secret,
            redirect_uri=c.redirect_uri,
            scope=c.scope,
            code_challenge_method="S256",
            timeout=15,
            **kwargs,
        )

    async def metadata(self) -> dict[str, Any]:
        async with self._lock:
            if self._metadata is None:
                async with httpx2.AsyncClient(timeout=15) as http:
                    response = await http.get(f"{self.base}/.well-known/openid-configuration")
                    response.raise_for_status()
                    metadata = response.json()
                if metadata.get("issuer") != self.config.issuer:  # OIDC Discovery 1.0, section 4.3
                    raise SignInFailed("The hub's discovery document names another issuer.")
                self._metadata = self._back_channel(metadata)
        return self._metadata

    def _back_channel(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The discovery document with the endpoints this service calls itself moved from the
        issuer's address to :attr:`base` (the same paths on the same hub)."""
        issuer = self.config.issuer.rstrip("/")
        if self.base == issuer:
            return metadata
        moved = dict(metadata)
        for name in BACK_CHANNEL:
            url = moved.get(name)
            if isinstance(url, str) and url.startswith(issuer + "/"):
                moved[name] = self.base + url[len(issuer):]
        return moved

    async def keys(self, *, refresh: bool = False) -> KeySet:
        metadata = await self.metadata()
        if self._keys is None or refresh:
            async with httpx2.AsyncClient(timeout=15) as http:
                response = await http.get(metadata["jwks_uri"])
                response.raise_for_status()
                self._keys = KeySet.import_key_set(response.json())
        return self._keys

    async def start_sign_in(self) -> tuple[str, dict[str, str]]:
        """The authorization URL, and what to keep in the session until the callback."""
        metadata = await self.metadata()
        verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(16)
        async with self.client() as client:
            url, state = client.create_authorization_url(
                metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
            )
        return url, {"state": state, "nonce": nonce, "code_verifier": verifier}

    async def finish_sign_in(self, callback_url: str, pending: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check the authorization response, exchange its code, and check the ID token.
        Returns the token response and the ID token's claims."""
        metadata = await self.metadata()
        answer = {k: v[0] for k, v in parse_qs(urlsplit(callback_url).query).items()}
        if not hmac.compare_digest(answer.get("state", ""), pending["state"]):
            raise SignInFailed("This sign-in answer belongs to another sign-in. Please try again.")
        if answer.get("iss") != self.config.issuer:  # RFC 9207: the answer comes from our hub
            raise SignInFailed("The sign-in answer did not come from OneSignIn.")
        if "error" in answer:
            if answer["error"] == "access_denied":
                raise SignInFailed("Sign-in was cancelled.")
            raise SignInFailed(answer.get("error_description") or answer["error"])
        async with self.client(state=pending["state"]) as client:
            token = dict(
                await client.fetch_token(
                    metadata["token_endpoint"], authorization_response=callback_url, code_verifier=pending["code_verifier"]
                )
            )
        return token, await self.check_id_token(token, pending["nonce"])

    async def check_id_token(self, token: dict[str, Any], nonce: str) -> dict[str, Any]:
        metadata = await self.metadata()
        algorithms = [a for a in metadata.get("id_token_signing_alg_values_supported", ["RS256"]) if a != "none"]
        try:
            decoded = jwt.decode(token["id_token"], await self.keys(), algorithms=algorithms)
        except JoseError:
            # Perhaps signed with a key the hub published after we fetched its set: fetch once more.
            decoded = jwt.decode(token["id_token"], await self.keys(refresh=True), algorithms=algorithms)
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            options={
                "iss": {"essential": True, "value": self.config.issuer},
                "aud": {"essential": True, "value": self.config.client_id},
            },
            params={"nonce": nonce, "client_id": self.config.client_id, "access_token": token["access_token"]},
        )
        claims.validate(leeway=60)
        return dict(claims)

    async def check_logout_token(self, token: str) -> dict[str, Any]:
        """The claims of a valid logout token (Back-Channel Logout 1.0, section 2.6); raises
        ``JoseError`` or ``ValueError`` otherwise."""
        metadata = await self.metadata()
        algorithms = [a for a in metadata.get("id_token_signing_alg_values_supported", ["RS256"]) if a != "none"]
        try:
            decoded = jwt.decode(token, await self.keys(), algorithms=algorithms)
        except JoseError:
            decoded = jwt.decode(token, await self.keys(refresh=True), algorithms=algorithms)
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=60, iss={"essential": True, "value": self.config.issuer}, aud={"essential": True, "value": self.config.client_id}, iat={"essential": True}
        )
        registry.validate(claims)
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
            raise ValueError("no back-channel logout event")
        if "nonce" in claims:
            raise ValueError("a logout token carries no nonce")
        sid, sub = claims.get("sid"), claims.get("sub")
        if not (isinstance(sid, str) and sid) and not (isinstance(sub, str) and sub):
            raise ValueError("neither sid nor sub")
        return claims

    async def call(self, session: Session, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        """Call the hub's API as the person; an expired access token is refreshed first (and
        the rotated refresh token kept)."""
        metadata = await self.metadata()

        async def keep(token: dict[str, Any], refresh_token: str | None = None, access_token: str | None = None) -> None:
            session.token = dict(token)

        async with self.client(token=session.token, update_token=keep, token_endpoint=metadata["token_endpoint"]) as client:
            try:
                response = await client.request(method, f"{self.base}{path}", **kwargs)
            except AuthlibBaseError as exc:
                raise SignedOut(str(exc)) from None
        if response.status_code == 401:
            raise SignedOut(response.text)
        return response


# -- The service --------------------------------------------------------------------------------


class Member:
    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self.hub = HubClient(config)
        self.profiles = Profiles()
        self.sessions = Sessions(f"{config.slug}_session", config.base_url.startswith("https://"))
        self.webhook = Webhook(config.webhook_secret) if config.webhook_secret else None

    # -- pages ----------------------------------------------------------------------------------

    def page(self, title: str, body: str, *, refresh: bool = False, status: int = 200) -> web.Response:
        c = self.config
        text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{'<meta http-equiv="refresh" content="2">' if refresh else ""}
<title>{html.escape(title)} · {html.escape(c.name)}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; color: #1d1d1f; }}
header {{ border-bottom: 4px solid {c.colour}; margin-bottom: 1.5rem; }}
header strong {{ font-size: 1.6rem; color: {c.colour}; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ text-align: left; padding: .25rem 1rem .25rem 0; }}
th {{ font-weight: 600; color: #555; }} .flash {{ background: #eef5ff; padding: .5rem 1rem; }}
.error {{ background: #fff0f0; padding: .5rem 1rem; }} small, .muted {{ color: #666; }}
button, .button {{ background: {c.colour}; color: #fff; border: 0; padding: .5rem 1rem; border-radius: 4px;
  font: inherit; cursor: pointer; text-decoration: none; display: inline-block; }}
.secondary {{ background: #e6e6e6; color: #1d1d1f; }} form.inline {{ display: inline; }}
label {{ display: block; margin-top: .5rem; }} input[type=text] {{ font: inherit; padding: .3rem; width: 18rem; }}
</style></head>
<body><header><strong>{html.escape(c.name)}</strong> <span class="muted">a OneSignIn member service</span></header>
{body}
</body></html>"""
        return web.Response(text=text, content_type="text/html", status=status)

    def csrf_field(self, session: Session) -> str:
        return f'<input type="hidden" name="csrf_token" value="{html.escape(session.csrf)}">'

    async def checked_form(self, request: web.Request) -> tuple[Session, Any]:
        """The session and the POSTed form, when its CSRF token is the session's."""
        session = self.sessions.find(request)
        form = await request.post()
        sent = form.get("csrf_token")
        if session is None or not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
            raise web.HTTPForbidden(text="This form has expired. Go back, reload the page and try again.")
        return session, form

    async def home(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.find(request)
        response: web.Response
        if session is None or session.sub is None:
            fresh = session is None
            session = session or Session()
            flash, session.flash = session.flash, None
            body = (_flash(flash) if flash else "") + f"""
<p>Sign in with your OneSignIn account: the same email address and password as every other
service of the group.</p>
<form method="post" action="/login">{self.csrf_field(session)}<button type="submit">Sign in with OneSignIn</button></form>"""
            response = self.page("Welcome", body)
            if fresh:
                self.sessions.new(response, session)
            return response
        flash, session.flash = session.flash, None
        known = self.profiles.get(session.sub)
        body = (_flash(flash) if flash else "") + f"<h1>Signed in as {html.escape(_display_name(known, session))}</h1>"
        if known is None:
            body += "<p>Waiting for your details from OneSignIn…</p>"
        else:
            p = known.profile
            rows = [
                ("Version", str(known.version)),
                ("Name", p.get("name")),
                ("Given name", p.get("given_name")),
                ("Family name", p.get("family_name")),
                ("Email", p.get("email")),
                ("Received via", ", ".join(known.via)),
                ("Received at", known.at.strftime("%H:%M:%S UTC")),
            ]
            body += "<table>" + "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(v) if v else '<span class=muted>—</span>'}</td></tr>" for k, v in rows
            ) + "</table>"
        body += f"""
<p><a class="button" href="/profile">Change your name</a>
<form class="inline" method="post" action="/logout">{self.csrf_field(session)}<button class="secondary" type="submit">Sign out of {html.escape(self.config.name)}</button></form></p>"""
        history = self.profiles.history.get(session.sub)
        if history:
            body += "<h2>Recent deliveries</h2><table><tr><th>At</th><th>Via</th><th>Event</th><th>Version</th><th></th></tr>"
            for r in history:
                outcome = "applied" if r.applied else "ignored (not newer)"
                body += (
                    f"<tr><td>{r.at:%H:%M:%S}</td><td>{html.escape(r.via)}</td><td>{html.escape(r.kind)}</td>"
                    f"<td>{r.version}</td><td>{outcome}</td></tr>"
                )
            body += "</table>"
        body += "<p><small>This page reloads every 2 seconds.</small></p>"
        return self.page("Home", body, refresh=True)

    async def profile_page(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.find(request)
        if session is None or session.sub is None:
            raise web.HTTPSeeOther("/")
        known = self.profiles.get(session.sub)
        profile = known.profile if known else {}
        flash, session.flash = session.flash, None
        return self.name_form(
            session, profile.get("given_name") or "", profile.get("family_name") or "", known.version if known else None,
            problems=_flash(flash) if flash else "",
        )

    def name_form(self, session: Session, given: str, family: str, version: int | None, *, problems: str = "", status: int = 200) -> web.Response:
        body = f"""<h1>Change your name</h1>{problems}
<p>Your name is kept by OneSignIn: changing it here changes it for every service you use with your account.</p>
<form method="post" action="/profile">{self.csrf_field(session)}
<input type="hidden" name="version" value="{version or ''}">
<label for="given_name">Given name</label><input id="given_name" type="text" name="given_name" value="{html.escape(given)}" maxlength="200">
<label for="family_name">Family name</label><input id="family_name" type="text" name="family_name" value="{html.escape(family)}" maxlength="200">
<p><button type="submit">Save</button> <a class="button secondary" href="/">Cancel</a></p>
</form>"""
        return self.page("Change your name", body, status=status)

    async def change_name(self, request: web.Request) -> web.StreamResponse:
        session, form = await self.checked_form(request)
        if session.sub is None:
            raise web.HTTPSeeOther("/")
        given, family = str(form.get("given_name", "")).strip(), str(form.get("family_name", "")).strip()
        version = str(form.get("version", ""))
        headers = {"If-Match": f'"{version}"'} if version.isdigit() else {}
        try:
            response = await self.hub.call(
                session, "PATCH", "/api/v1/me", json={"given_name": given or None, "family_name": family or None}, headers=headers
            )
        except SignedOut:
            return self._signed_out(request)
        except httpx2.HTTPError as exc:
            return self.name_form(session, given, family, None, problems=_error(f"OneSignIn could not be reached ({type(exc).__name__})."), status=502)
        if response.status_code == 200:
            body = response.json()
            self.profiles.apply(body["sub"], body["version"], body["profile"], via="this service's change", kind="PATCH /api/v1/me")
            session.flash = "Saved. Every other service you use with OneSignIn is told."
            raise web.HTTPSeeOther("/")
        if response.status_code == 412:
            session.flash = "Your details were changed elsewhere in the meantime; here they are now. Please try again."
            with contextlib.suppress(SignedOut, httpx2.HTTPError):
                await self.refresh_profile(session)
            raise web.HTTPSeeOther("/profile")
        problem = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        messages = [f"{p.get('field')}: {p.get('message')}" for p in problem.get("problems") or []] or [
            problem.get("error_description") or f"OneSignIn answered {response.status_code}."
        ]
        return self.name_form(
            session, given, family, int(version) if version.isdigit() else None,
            problems=_error(*messages), status=422 if response.status_code == 422 else 502,
        )

    async def refresh_profile(self, session: Session, *, via: str = "API") -> None:
        response = await self.hub.call(session, "GET", "/api/v1/me")
        if response.status_code == 200:
            body = response.json()
            self.profiles.apply(body["sub"], body["version"], body["profile"], via=via, kind="GET /api/v1/me")

    # -- sign-in and sign-out -------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        session, _ = await self.checked_form(request)
        try:
            url, session.pending = await self.hub.start_sign_in()
        except (httpx2.HTTPError, SignInFailed, ValueError) as exc:
            log.warning("%s: OneSignIn discovery failed: %s: %s", self.config.name, type(exc).__name__, exc)
            session.flash = "OneSignIn cannot be reached just now. Please try again in a moment."
            raise web.HTTPSeeOther("/") from None
        raise web.HTTPSeeOther(url)

    async def callback(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.find(request)
        if session is None or session.pending is None:
            return self.page("Sign-in expired", '<p class="error">This sign-in has expired.</p><p><a href="/">Start again</a></p>', status=400)
        pending, session.pending = session.pending, None
        callback_url = f"{self.config.redirect_uri}?{request.query_string}"
        try:
            token, claims = await self.hub.finish_sign_in(callback_url, pending)
        except SignInFailed as exc:
            session.flash = str(exc)
            raise web.HTTPSeeOther("/") from None
        except (AuthlibBaseError, JoseError, httpx2.HTTPError, KeyError, ValueError) as exc:
            log.warning("%s: sign-in failed: %s: %s", self.config.name, type(exc).__name__, exc)
            session.flash = "Sign-in did not complete. Please try again."
            raise web.HTTPSeeOther("/") from None
        response = web.HTTPSeeOther("/")
        self.sessions.drop(request, response)
        signed_in = self.sessions.new(response, Session(sub=claims["sub"], token=token, sid=claims.get("sid")))
        # Until the hub's deliveries arrive, read the details once (the highest version still wins).
        with contextlib.suppress(SignedOut, httpx2.HTTPError):
            await self.refresh_profile(signed_in, via="sign-in")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session here, then at the hub (RP-Initiated Logout 1.0): the browser goes to
        its ``end_session_endpoint`` with the ID token as hint, the hub tells the person's other
        services by back-channel, and sends the browser back to this service's home page."""
        session, _ = await self.checked_form(request)
        metadata: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            metadata = await self.hub.metadata()
        where = "/"
        id_token = (session.token or {}).get("id_token")
        if metadata.get("end_session_endpoint") and id_token:
            query = urlencode(
                {"id_token_hint": id_token, "post_logout_redirect_uri": self.config.post_logout_redirect_uri, "client_id": self.config.client_id}
            )
            where = f"{metadata['end_session_endpoint']}?{query}"
        response = web.HTTPSeeOther(where)
        self.sessions.drop(request, response)
        if session.token and session.token.get("refresh_token") and metadata.get("revocation_endpoint"):
            with contextlib.suppress(Exception):
                async with self.hub.client() as client:
                    await client.revoke_token(metadata["revocation_endpoint"], session.token["refresh_token"], token_type_hint="refresh_token")
        raise response

    async def backchannel_logout(self, request: web.Request) -> web.StreamResponse:
        """The hub's logout token (Back-Channel Logout 1.0): 400 unless valid; then the sessions
        of its ``sid`` (or of its ``sub``) end here."""
        form = await request.post()
        token = form.get("logout_token")
        if not isinstance(token, str) or not token or len(token) > 16_000:
            return web.json_response({"error": "invalid_request"}, status=400)
        try:
            claims = await self.hub.check_logout_token(token)
        except (JoseError, ValueError, httpx2.HTTPError, SignInFailed) as exc:
            log.info("%s: refused a logout token: %s", self.config.name, type(exc).__name__)
            return web.json_response({"error": "invalid_request"}, status=400)
        self.sessions.end(sid=claims.get("sid"), sub=claims.get("sub"))
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    def _signed_out(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/")
        self.sessions.drop(request, response)
        return response

    # -- deliveries -----------------------------------------------------------------------------

    def deliver(self, payload: Any, via: str) -> bool | None:
        """Apply one delivery: True when it was newer, False when not, None when it is not a
        profile delivery."""
        event = read_event(payload)
        if event is None:
            return None
        kind, sub, version, profile = event
        return self.profiles.apply(sub, version, profile, via=via, kind=kind)

    async def webhook_endpoint(self, request: web.Request) -> web.StreamResponse:
        if self.webhook is None:
            raise web.HTTPNotFound()
        body = await request.text()
        try:
            payload = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return web.Response(status=401)
        if self.deliver(payload, "webhook") is None and isinstance(payload, dict) and payload.get("type") in EVENT_TYPES:
            return web.Response(status=400)
        # Anything else is acknowledged too: unknown event types are for later versions.
        return web.Response(status=204)

    async def consume(self) -> None:
        """Read the service's topic for ever (reconnecting after errors); offsets are committed
        after the messages are applied."""
        assert self.config.topic
        backoff = 1.0
        while True:
            consumer = AIOKafkaConsumer(
                self.config.topic,
                group_id=self.config.group_id or f"{self.config.slug}.profile-sync",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                metadata_max_age_ms=5000,
                **self.config.kafka,
            )
            try:
                await consumer.start()
                backoff = 1.0
                while True:
                    batches = await consumer.getmany(timeout_ms=1000)
                    for messages in batches.values():
                        for message in messages:
                            try:
                                payload = json.loads(message.value or b"")
                            except ValueError:
                                log.warning("%s: skipped a message that is not JSON at offset %s", self.config.name, message.offset)
                                continue
                            self.deliver(payload, "topic")
                    if batches:
                        await consumer.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, connect again
                log.warning("%s: Kafka: %s: %s; retrying in %.0f s", self.config.name, type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def kafka_ctx(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.consume(), name=f"{self.config.slug}-topic") if self.config.topic else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MEMBER = web.AppKey("member", Member)


def _headers_for(config: MemberConfig):  # type: ignore[no-untyped-def]
    hub = "{0.scheme}://{0.netloc}".format(urlsplit(config.issuer))
    # Sign-in answers with a redirect to the hub, so forms may lead there too.
    csp = f"default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {hub}; frame-ancestors 'none'; base-uri 'none'"

    @web.middleware
    async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return headers


def create_member_app(config: MemberConfig) -> web.Application:
    """The service as an aiohttp application."""
    member = Member(config)
    app = web.Application(middlewares=[_headers_for(config)], client_max_size=256 * 1024)
    app[MEMBER] = member
    r = app.router
    r.add_get("/", member.home)
    r.add_post("/login", member.login)
    r.add_get(CALLBACK_PATH, member.callback)
    r.add_post("/logout", member.logout)
    r.add_get("/profile", member.profile_page)
    r.add_post("/profile", member.change_name)
    r.add_post(WEBHOOK_PATH, member.webhook_endpoint)
    r.add_post(BACKCHANNEL_LOGOUT_PATH, member.backchannel_logout)
    r.add_get("/healthz", member.health)
    app.cleanup_ctx.append(member.kafka_ctx)
    return app


def _display_name(known: Known | None, session: Session) -> str:
    profile = known.profile if known else {}
    joined = " ".join(p for p in (profile.get("given_name"), profile.get("family_name")) if p)
    return profile.get("name") or joined or profile.get("email") or session.sub or "?"


def _flash(message: str) -> str:
    return f'<p class="flash" role="status">{html.escape(message)}</p>'


def _error(*messages: str) -> str:
    return "".join(f'<p class="error" role="alert">{html.escape(m)}</p>' for m in messages)
