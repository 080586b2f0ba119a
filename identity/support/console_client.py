"""The console as a first-party OpenID Connect client of the hub itself.

Agents sign in through the hub's own login: ``/support/login`` sends the browser to the hub's
authorization endpoint (code flow, S256 PKCE, ``state``, ``nonce``, ``prompt=login`` so the
password is always asked), and ``/support/callback`` exchanges the code. The exchange goes
through the provider in process (the same authlib token endpoint code, client authentication
included), not over HTTP: a hub behind a proxy often cannot reach its own public issuer URL.

The client is a ``services`` row marked ``first_party`` (no consent screen, no link). Its
secret is derived from the hub's secret key, so nothing secret is stored or configured; the row
is made when first needed and corrected if the issuer or the key changed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.support.words import _, lazy_gettext
from identity.db.models import Service
from identity.db.upsert import ensure_row
from identity.oidc.adapter import HubOAuth2Request
from identity.oidc.server import Provider
from identity.settings import Settings
from identity.tokens import digest

CLIENT_ID = "onesignin-console"
NAME = "One Sign In support console"
SCOPE = "openid email"
CALLBACK = "/support/callback"
#: How long a started sign-in may take (the hub's sign-in page in between).
PENDING_TTL = 600
EXPIRED = lazy_gettext("This sign-in has expired. Start again.")
NOT_COMPLETED = lazy_gettext("The sign-in could not be completed. Start again.")


class SignInFailed(Exception):
    """The callback cannot complete the sign-in. ``public`` is shown; ``detail`` only logged."""

    def __init__(self, public: Any, detail: str) -> None:
        super().__init__(detail)
        self.public = public
        self.detail = detail


def redirect_uri(settings: Settings) -> str:
    return settings.issuer + CALLBACK


def client_secret(hub_secret: bytes) -> str:
    return hmac.new(hub_secret, b"onesignin console client v1", hashlib.sha256).hexdigest()


async def ensure_client(db: AsyncSession, settings: Settings, hub_secret: bytes) -> None:
    """Register the console's client unless it exists; bring its redirect URI and secret up to
    date. Idempotent and safe when several hub processes do it at once."""
    wanted = {
        "name": NAME,
        "secret_hash": digest(client_secret(hub_secret)),
        "redirect_uris": [redirect_uri(settings)],
        "scope": SCOPE,
        "grant_types": ["authorization_code"],
        "first_party": True,
    }
    await ensure_row(
        db, Service, client_id=CLIENT_ID, post_logout_redirect_uris=[], id_token_signed_response_alg="RS256", **wanted
    )
    row = await db.scalar(select(Service).where(Service.client_id == CLIENT_ID))
    assert row is not None
    if any(getattr(row, name) != value for name, value in wanted.items()):
        row = await db.scalar(select(Service).where(Service.client_id == CLIENT_ID).with_for_update())
        assert row is not None
        for name, value in wanted.items():
            setattr(row, name, value)


@dataclass(frozen=True)
class Pending:
    """What the console keeps between ``/login`` and ``/callback`` (in a signed cookie)."""

    state: str
    nonce: str
    verifier: str
    started: int

    @classmethod
    def new(cls) -> Pending:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48), int(time.time()))

    def seal(self, hub_secret: bytes) -> str:
        body = base64.urlsafe_b64encode(json.dumps([self.state, self.nonce, self.verifier, self.started]).encode()).decode()
        return body + "." + _mac(hub_secret, body)

    @classmethod
    def unseal(cls, value: str | None, hub_secret: bytes) -> Pending | None:
        if not value or len(value) > 1000 or "." not in value:
            return None
        body, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, _mac(hub_secret, body)):
            return None
        try:
            state, nonce, verifier, started = json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            return None
        if not isinstance(started, int) or time.time() - started > PENDING_TTL:
            return None
        return cls(str(state), str(nonce), str(verifier), started)


def _mac(hub_secret: bytes, body: str) -> str:
    return hmac.new(hub_secret, b"console-login|" + body.encode(), hashlib.sha256).hexdigest()


def authorization_url(settings: Settings, pending: Pending) -> str:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri(settings),
        "scope": SCOPE,
        "state": pending.state,
        "nonce": pending.nonce,
        "code_challenge": create_s256_code_challenge(pending.verifier),
        "code_challenge_method": "S256",
        "prompt": "login",
    }
    return f"{settings.issuer}/authorize?{urlencode(params)}"


def check_callback(query: Any, settings: Settings, pending: Pending | None) -> str:
    """The code from an authorization response, after checking ``state`` and ``iss`` (RFC 9207)."""
    if pending is None:
        raise SignInFailed(EXPIRED, "no or stale pending-login cookie")
    if not hmac.compare_digest(str(query.get("state", "")).encode(), pending.state.encode()):
        raise SignInFailed(EXPIRED, "state mismatch")
    if query.get("iss") != settings.issuer:
        raise SignInFailed(NOT_COMPLETED, "iss missing or wrong")
    if "error" in query:
        raise SignInFailed(_("The sign-in was not completed. Start again."), f"authorization error {query.get('error')!r}")
    code = query.get("code")
    if not code or len(code) > 200:
        raise SignInFailed(NOT_COMPLETED, "no code")
    return str(code)


async def exchange(
    db: AsyncSession, provider: Provider, settings: Settings, hub_secret: bytes, code: str, pending: Pending
) -> tuple[int, dict[str, Any]]:
    """Redeem the code with the provider's token endpoint logic, authenticated with the client
    secret (``client_secret_basic``): the token response's status and body. The caller commits,
    error or not (a replayed code revokes what it issued)."""
    basic = base64.b64encode(f"{CLIENT_ID}:{client_secret(hub_secret)}".encode()).decode()
    request = HubOAuth2Request(
        "POST",
        settings.issuer,
        "/token",
        {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        form=[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri(settings)),
            ("code_verifier", pending.verifier),
        ],
    )
    response = await provider.run(db, lambda: provider.create_token_response(request))
    return response.status, json.loads(response.text or "{}")


def token_or_fail(status: int, body: dict[str, Any]) -> dict[str, Any]:
    if status != 200 or "id_token" not in body or "access_token" not in body:
        raise SignInFailed(NOT_COMPLETED, f"token endpoint {status}: {body.get('error')}")
    return body


def verified_sub(provider: Provider, settings: Settings, token: dict[str, Any], pending: Pending) -> str:
    """Validate the ID token (signature, iss, aud, exp, nonce, at_hash, a fresh auth_time) and
    return its ``sub``."""
    try:
        decoded = jwt.decode(token["id_token"], provider.keys.public_key_set(), algorithms=["RS256"])
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            options={"iss": {"essential": True, "value": settings.issuer}, "aud": {"essential": True, "value": CLIENT_ID}},
            params={"nonce": pending.nonce, "client_id": CLIENT_ID, "access_token": token["access_token"]},
        )
        claims.validate()
    except (JoseError, ValueError, KeyError) as exc:
        raise SignInFailed(NOT_COMPLETED, f"ID token refused: {exc!r}") from None
    # prompt=login asked for a fresh password: the authentication must postdate /login.
    if int(claims.get("auth_time") or 0) < pending.started - 5:
        raise SignInFailed(NOT_COMPLETED, "auth_time before the sign-in began")
    return str(claims["sub"])
