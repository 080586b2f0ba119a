"""DPoP (RFC 9449): tokens bound to a key the client holds, proved on every use.

A client sends a *proof* in the ``DPoP`` header: a JWT (``typ: dpop+jwt``) signed with its
private key, whose public half is in the header (``jwk``), naming the request (``htm``, ``htu``
without query or fragment), when it was made (``iat``), a unique ``jti`` and, at a resource, the
hash of the access token (``ath``). The hub binds the tokens it issues to the key's thumbprint
(``cnf.jkt``, RFC 7638), so a stolen token is useless without the key.

* ``iat`` is accepted :data:`IAT_WINDOW` seconds either side of now; each proof's ``jti`` is
  accepted once (``dpop_proofs``, in the database so every hub process sees it, purged once the
  proof could no longer be accepted anyway).
* The token endpoint demands a server nonce (section 8): a proof without a valid one gets
  ``use_dpop_nonce`` and a fresh nonce in the ``DPoP-Nonce`` header. Nonces are stateless: an
  HMAC of the current :data:`NONCE_WINDOW` under a key derived from the hub's secret key, so any
  process accepts a nonce another issued; the current and the previous window are accepted.
* Only asymmetric algorithms (:data:`ALGORITHMS`); a ``jwk`` holding private members is refused.

:func:`check` is pure (no I/O); :func:`remember` records the ``jti`` inside the caller's unit of
work. The errors are authlib ``OAuth2Error`` s: :class:`InvalidProof` (``invalid_dpop_proof``)
and :class:`UseNonce` (``use_dpop_nonce``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from authlib.oauth2 import OAuth2Error
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry

from identity.db.models import DPoPProof
from identity.db.upsert import insert_for
from identity.oidc.client_auth import SIGNING_ALGORITHMS
from identity.oidc.records import db
from identity.tokens import digest

__all__ = [
    "ALGORITHMS", "IAT_WINDOW", "NONCE_WINDOW", "InvalidProof", "InvalidToken", "Nonces", "Proof",
    "UseNonce", "access_token_hash", "challenge", "check", "from_request", "proof_header", "remember",
]

#: Proof signing algorithms (asymmetric only), as discovery lists them.
ALGORITHMS = list(SIGNING_ALGORITHMS)
#: Seconds a proof's ``iat`` may be from now, either way.
IAT_WINDOW = 60
#: Seconds each server nonce is issued for (a nonce is accepted for up to twice this).
NONCE_WINDOW = 300
MAX_JTI = 256
MAX_PROOF = 8192
_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def challenge(error: str | None = None, description: str | None = None) -> str:
    """A ``WWW-Authenticate: DPoP`` challenge (RFC 9449 section 7.1)."""
    parts = []
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    parts.append(f'algs="{" ".join(ALGORITHMS)}"')
    return "DPoP " + ", ".join(parts)


class _DPoPError(OAuth2Error):
    #: At a resource (401 with a DPoP challenge) rather than at the token endpoint (400, JSON).
    resource = False

    def __init__(self, description: str | None = None, *, resource: bool = False, nonce: str | None = None) -> None:
        super().__init__(description=description)
        self.resource = resource
        self.nonce = nonce
        self.status_code = 401 if resource else 400

    def get_headers(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        if self.resource:
            headers.append(("WWW-Authenticate", challenge(self.error, self.description)))
        if self.nonce:
            headers.append(("DPoP-Nonce", self.nonce))
        return headers


class InvalidProof(_DPoPError):
    error = "invalid_dpop_proof"


class UseNonce(_DPoPError):
    error = "use_dpop_nonce"
    description = "Sign the DPoP proof again with the nonce in the DPoP-Nonce header."


class InvalidToken(_DPoPError):
    """A token sent with the DPoP scheme that is not valid, or not bound to the proof's key."""

    error = "invalid_token"


@dataclass(frozen=True)
class Proof:
    jkt: str  #: the key's SHA-256 thumbprint (RFC 7638), base64url
    jti: str
    iat: float


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token (section 4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=").decode()


def _target(url: str) -> str:
    """``htu`` as compared (section 4.3): without query and fragment, scheme and host lowercase."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


class Nonces:
    """Stateless server nonces: an HMAC of the time window under the hub's secret key."""

    def __init__(self, secret_key: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"onesignin dpop nonces v1")
        self._key = hkdf.derive(secret_key.encode())

    def _for(self, window: int) -> str:
        mac = hmac.new(self._key, str(window).encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(mac).decode()

    def current(self, now: float | None = None) -> str:
        return self._for(int((now if now is not None else time.time()) // NONCE_WINDOW))

    def accepts(self, nonce: Any, now: float | None = None) -> bool:
        if not isinstance(nonce, str):
            return False
        window = int((now if now is not None else time.time()) // NONCE_WINDOW)
        return any(hmac.compare_digest(nonce, self._for(w)) for w in (window, window - 1))


def proof_header(headers: Any, *, resource: bool = False) -> str | None:
    """The one ``DPoP`` header of a request (None when absent; two are refused)."""
    values = headers.getall("DPoP", []) if hasattr(headers, "getall") else [v for v in [headers.get("DPoP")] if v]
    if len(values) > 1:
        raise InvalidProof("Send one DPoP proof.", resource=resource)
    return values[0] if values else None


def check(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str | None = None,
    nonces: Nonces | None = None,
    resource: bool = False,
    now: float | None = None,
) -> Proof:
    """The proof, verified for a request of ``method`` to ``url`` (and, at a resource, for
    ``access_token``); with ``nonces``, its ``nonce`` must be one of the hub's."""
    now = now if now is not None else time.time()

    def bad(description: str) -> InvalidProof:
        return InvalidProof(description, resource=resource)

    if len(proof) > MAX_PROOF:
        raise bad("The DPoP proof is too large.")
    try:
        headers = jws.extract_compact(proof.encode()).headers()
    except (JoseError, ValueError, TypeError):
        raise bad("The DPoP proof is not a JWT.") from None
    if headers.get("typ") != "dpop+jwt":
        raise bad("The DPoP proof's typ must be dpop+jwt.")
    alg = headers.get("alg")
    if alg not in ALGORITHMS:
        raise bad("The DPoP proof must be signed with an asymmetric algorithm.")
    jwk = headers.get("jwk")
    if not isinstance(jwk, dict) or _PRIVATE_MEMBERS & set(jwk) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
        raise bad("The DPoP proof's jwk must be a public key.")
    try:
        key = JWKRegistry.import_key(jwk)
        claims = json.loads(jws.deserialize_compact(proof, key, algorithms=[alg]).payload)
    except (JoseError, ValueError, TypeError):
        raise bad("The DPoP proof's signature is not valid.") from None
    if not isinstance(claims, dict):
        raise bad("The DPoP proof's claims are not a JSON object.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise bad("The DPoP proof needs a jti.")
    if claims.get("htm") != method:
        raise bad("The DPoP proof is for another method.")
    htu = claims.get("htu")
    if not isinstance(htu, str) or _target(htu) != _target(url):
        raise bad("The DPoP proof is for another URL.")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or abs(now - iat) > IAT_WINDOW:
        raise bad("The DPoP proof's iat is too old or in the future.")
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise bad("The DPoP proof's ath does not match the access token.")
    if nonces is not None and not nonces.accepts(claims.get("nonce"), now):
        raise UseNonce(resource=resource, nonce=nonces.current(now))
    return Proof(jkt=key.thumbprint(), jti=jti, iat=float(iat))


def remember(proof: Proof, *, resource: bool = False) -> None:
    """Record the proof's ``jti`` (inside :meth:`Provider.run`); a proof seen before is refused."""
    session = db()
    expires_at = dt.datetime.fromtimestamp(proof.iat + IAT_WINDOW + 1, dt.UTC)
    statement = insert_for(session, DPoPProof).values(
        jti_hash=digest(f"{proof.jkt}:{proof.jti}"), expires_at=expires_at
    ).on_conflict_do_nothing()
    if not session.execute(statement).rowcount:
        raise InvalidProof("The DPoP proof was used before.", resource=resource)


def from_request(oauth_request: Any, *, nonces: Nonces | None = None) -> Proof | None:
    """The verified proof sent to an endpoint of the hub (None when the request has none)."""
    text = proof_header(oauth_request.headers)
    if text is None:
        return None
    return check(text, method=oauth_request.method, url=oauth_request.uri, nonces=nonces)
