"""Security Event Tokens (RFC 8417) as SSF 1.0 profiles them.

A SET's claims are fixed when the event is written (``jti``, ``iat``, ``aud`` = the service's
client_id, ``sub_id``, ``events``); the issuer and the signature are added when it is sent or
polled, with the hub's signing key of the moment (``identity.oidc.keys``), so a SET waiting
through a key rotation still verifies against the JWKS the receiver fetches then. The header
says ``typ: secevent+jwt`` (RFC 8417 section 2.3); SETs carry no ``sub`` and no ``exp``."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from joserfc import jwt

from identity.oidc.keys import KeyRing
from identity.ssf.events import Event

TYP = "secevent+jwt"
ALG = "RS256"


def iss_sub(issuer: str, sub: str) -> dict[str, str]:
    return {"format": "iss_sub", "iss": issuer, "sub": sub}


def claims(event: Event, *, client_id: str, subject: dict[str, str], at: dt.datetime) -> dict[str, Any]:
    """The claims of the SET for one service, without ``iss`` (added at signing)."""
    return {
        "jti": str(uuid.uuid4()),
        "iat": int(at.timestamp()),
        "aud": client_id,
        "sub_id": subject,
        "events": {event.uri: event.payload},
    }


def body(claims: dict[str, Any]) -> str:
    return json.dumps(claims, separators=(",", ":"), ensure_ascii=False)


def sign(keys: KeyRing, issuer: str, stored: str) -> str:
    """The SET stored as ``stored`` (its claims' JSON), signed now."""
    payload = {"iss": issuer, **json.loads(stored)}
    # An iss_sub subject is written with the issuer left out too: the one the SET is signed as.
    sub_id = payload.get("sub_id")
    if isinstance(sub_id, dict) and sub_id.get("format") == "iss_sub" and not sub_id.get("iss"):
        payload["sub_id"] = {**sub_id, "iss": issuer}
    key = keys.signing_key(ALG)
    return jwt.encode({"alg": ALG, "kid": key.kid, "typ": TYP}, payload, key, algorithms=[ALG])
