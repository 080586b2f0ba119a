"""Signed request objects (RFC 9101, OIDC Core 6.1): the authorization request as a JWT the
service signs with a key of its JWK Set (registered inline or at its ``jwks_uri``, the keys
``private_key_jwt`` uses, through the same cache), sent by value in ``request`` at /authorize
or inside a pushed request.

The object is checked: signed with an asymmetric algorithm by one of the service's keys,
``iss`` and ``client_id`` the service, ``aud`` the hub's issuer, ``exp`` present, not past and
at most :data:`MAX_LIFETIME` ahead, ``nbf`` and ``iat`` not in the future, and a ``jti`` used
once (remembered beside the service's client assertions, in ``client_assertions``, under a
distinct hash, until it expires). Its parameters then replace the request's: only the
object's count (RFC 9101 section 6.3), with the ``client_id``. An unsigned object
(``alg: none``) is not verified here and stays refused (``request_not_supported``).
Any failure is ``invalid_request_object``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from authlib.oauth2 import OAuth2Error
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact

from identity.db.models import ClientAssertion
from identity.db.upsert import insert_for
from identity.oidc.client_auth import SIGNING_ALGORITHMS
from identity.oidc.records import db
from identity.tokens import digest

__all__ = ["ALGORITHMS", "InvalidRequestObject", "is_signed", "unverified", "verify"]

ALGORITHMS = list(SIGNING_ALGORITHMS)
MAX_LIFETIME = 3600
LEEWAY = 60
MAX_JTI = 256
#: Claims about the JWT itself, not parameters of the authorization request.
_JWT_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti", "sub"})
#: Parameters that may not come from inside a request object (OIDC Core 6.1).
_NOT_INSIDE = frozenset({"request", "request_uri"})


class InvalidRequestObject(OAuth2Error):
    error = "invalid_request_object"
    status_code = 400


def unverified(request_object: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The header and claims of a request object, read without checking anything: only to
    tell signed from unsigned and to know which keys to have ready."""
    try:
        obj = extract_compact(request_object.encode())
        claims = json.loads(obj.payload)
        header = obj.headers()
    except (JoseError, ValueError, TypeError):
        return None
    if not isinstance(claims, dict):
        return None
    return header, claims


def is_signed(request_object: str) -> bool:
    """Whether the object claims a signature at all (an ``alg: none`` or unreadable object is
    left to the authorization endpoint, which refuses it as ``request_not_supported``)."""
    found = unverified(request_object)
    return found is not None and found[0].get("alg") not in (None, "none")


def verify(request_object: str, client: Any, keys: Any, issuer: str, now: float | None = None) -> list[tuple[str, str]]:
    """The authorization request inside a signed object of ``client`` (inside
    :meth:`Provider.run`: the ``jti`` is recorded in the caller's unit of work)."""
    if keys is None:
        raise InvalidRequestObject("The service's keys are not available.")
    try:
        claims = jwt.decode(request_object, keys, algorithms=ALGORITHMS).claims
    except (JoseError, ValueError, TypeError):
        raise InvalidRequestObject("The request object's signature is not valid.") from None
    now = now if now is not None else time.time()
    if claims.get("iss") != client.client_id:
        raise InvalidRequestObject("The request object's iss is not the service.")
    if claims.get("client_id") != client.client_id:
        raise InvalidRequestObject("The request object's client_id is not the service.")
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud != issuer:
        raise InvalidRequestObject("The request object's aud is not this hub's issuer.")
    exp = claims.get("exp")
    if not _number(exp) or exp < now - LEEWAY or exp > now + MAX_LIFETIME + LEEWAY:
        raise InvalidRequestObject("The request object's exp is missing, past, or too far ahead.")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not _number(value) or value > now + LEEWAY):
            raise InvalidRequestObject(f"The request object's {name} is in the future.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise InvalidRequestObject("The request object needs a jti.")
    session = db()
    statement = insert_for(session, ClientAssertion).values(
        service_id=client.id,
        jti_hash=digest("request-object:" + jti),
        expires_at=dt.datetime.fromtimestamp(float(exp) + LEEWAY, dt.UTC),
    ).on_conflict_do_nothing()
    if not session.execute(statement).rowcount:
        raise InvalidRequestObject("The request object was used before.")
    params = [(k, _text(v)) for k, v in claims.items() if k not in _JWT_CLAIMS | _NOT_INSIDE and v is not None]
    if any("\x00" in v for _, v in params):
        raise InvalidRequestObject("NUL in a parameter of the request object.")
    return params


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)  # claims and other structured parameters, as they would be sent
