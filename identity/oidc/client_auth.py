"""``private_key_jwt`` client authentication (RFC 7523 sections 2.2 and 3, OIDC Core 9): authlib's
``JWTBearerClientAssertion`` with the rules authlib leaves to the provider.

* The audience is the hub's issuer identifier, or its token endpoint URL (what OIDC Core 9 and
  older clients, authlib's among them, put there), as one value: an assertion naming several
  audiences could have been made for someone else too.
* ``exp`` is required, and at most :attr:`PrivateKeyJWT.MAX_LIFETIME` seconds ahead;
  ``iat``, when present, not in the future.
* Each ``jti`` is accepted once: remembered in ``client_assertions`` until the assertion
  expires, in the database, so that every hub process sees it.
* Any failure is ``401 invalid_client`` (RFC 7523 section 3.2) and changes nothing else.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError

from identity.db.models import ClientAssertion
from identity.db.upsert import insert_for
from identity.oidc.client import AuthMethod
from identity.oidc.records import db
from identity.tokens import digest

if TYPE_CHECKING:
    from identity.oidc.server import Provider

log = logging.getLogger(__name__)

#: Signature algorithms accepted on client assertions (asymmetric only: no HS*, no "none").
SIGNING_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class PrivateKeyJWT(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = AuthMethod.PRIVATE_KEY_JWT.value
    #: The longest an assertion may live (authlib's client signs them for an hour).
    MAX_LIFETIME = 3600
    #: Allowed clock skew, in seconds.
    LEEWAY = 60
    MAX_JTI = 256

    def __init__(self, provider: Provider) -> None:
        super().__init__(validate_jti=True, leeway=self.LEEWAY)
        self.provider = provider

    def __call__(self, query_client: Any, request: Any) -> Any:
        try:
            client = super().__call__(query_client, request)
        except InvalidClientError as exc:
            log.info("client assertion refused: %s", exc.description)
            raise _refused() from None
        stated = request.form.get("client_id")
        if client is not None and stated is not None and stated != client.client_id:
            # RFC 7521 section 4.2: a client_id sent beside the assertion must name its subject.
            raise _refused()
        return client

    def get_audiences(self) -> list[str]:
        return [self.provider.issuer, f"{self.provider.issuer}/token"]

    def resolve_client_public_key(self, client: Any) -> Any:
        keys = self.provider.client_keys.keys_for(client)
        if keys is None:
            raise InvalidClientError(description="The service's keys are not available.")
        return keys

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=SIGNING_ALGORITHMS)
        except (JoseError, ValueError, TypeError) as exc:
            # An unknown kid is a ValueError in joserfc, a bad signature a JoseError.
            raise InvalidClientError(description=f"Invalid assertion ({exc.__class__.__name__}).") from None
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str) or aud not in self.get_audiences():
            raise InvalidClientError(description="The assertion's audience is not this hub.")
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise InvalidClientError(description="The assertion has no exp.")
        if exp > now + self.MAX_LIFETIME + self.LEEWAY:
            raise InvalidClientError(description="The assertion expires too far in the future.")
        iat = claims.get("iat")
        if iat is not None and (not isinstance(iat, int | float) or iat > now + self.LEEWAY):
            raise InvalidClientError(description="The assertion was issued in the future.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= self.MAX_JTI:
            raise InvalidClientError(description="The assertion needs a jti (a string of at most 256 characters).")
        super().verify_claims(claims)  # iss = sub, exp not past, then validate_jti

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        client = self.provider.query_client(claims["sub"])
        if client is None:
            return False
        expires_at = dt.datetime.fromtimestamp(float(claims["exp"]) + self.LEEWAY, dt.UTC)
        session = db()
        statement = insert_for(session, ClientAssertion).values(
            service_id=client.id, jti_hash=digest(jti), expires_at=expires_at
        ).on_conflict_do_nothing()
        return bool(session.execute(statement).rowcount)


def _refused() -> InvalidClientError:
    # One fixed description: the reason is logged, never told (it could guide a forger).
    return InvalidClientError(status_code=401, description="Client authentication failed.")
