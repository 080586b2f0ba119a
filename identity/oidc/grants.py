"""authlib's grants, customised by subclassing and extensions, with the rules authlib leaves to
the provider: S256 PKCE for every client, single-use codes whose replay revokes what they
issued, refresh-token rotation whose reuse revokes the whole family."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode, UserInfo
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError
from sqlalchemy import select

from identity.db.models import Account, AuthorizationCode, utcnow
from identity.oidc import scopes
from identity.oidc.records import (
    IssuedCode,
    IssuedToken,
    db,
    find_stored_token,
    revoke_grant,
)
from identity.tokens import digest

if TYPE_CHECKING:
    from identity.oidc.server import Provider

log = logging.getLogger(__name__)

_JKT = re.compile(r"[A-Za-z0-9_-]{43}")

#: Client authentication at the token and revocation endpoints: a public client identifies
#: itself with its client_id alone ("none"), and may revoke its own tokens (RFC 7009 section 5).
#: A failed private_key_jwt assertion is refused at once, before any other method is tried.
CLIENT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic", "client_secret_post", "none"]
#: Introspection (RFC 7662 section 2.1) is for clients that can authenticate: no "none".
INTROSPECTION_AUTH_METHODS = ["private_key_jwt", "client_secret_basic", "client_secret_post"]


class S256Required(CodeChallenge):
    """PKCE with S256 for every client, confidential ones included (RFC 9700 section 2.1.1)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256.")
        if data.get("code_challenge_method", "plain") != "S256":
            raise InvalidRequestError("Only code_challenge_method=S256 is supported.")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: IssuedCode) -> str:
        return authorization_code.row.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: IssuedCode) -> str:
        return authorization_code.row.code_challenge_method


class UnsignedRequestObjects:
    """OIDC Core 6.1 and 6.2, RFC 9101: a signed request object is verified before authlib
    sees the request (``identity.oidc.request_objects``), which then carries the object's
    parameters instead. What is still here is refused: an unsigned object (``alg: none``) with
    ``request_not_supported``, a ``request_uri`` other than a pushed request's with
    ``request_uri_not_supported``, once the client and its redirect URI are known to be valid,
    so the error goes back to the service, and before any parameter is checked: one that was
    sent only inside the request object (PKCE's, say) would otherwise be reported missing."""

    def __call__(self, grant: Any) -> None:
        grant.register_hook("before_validate_authorization_request_payload", self.refuse)

    @staticmethod
    def refuse(grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if "request" in data:
            raise RequestNotSupportedError("Unsigned request objects are not supported.")
        if "request_uri" in data:
            raise RequestURINotSupportedError("Only the request_uri of a pushed request is supported.")
        jkt = data.get("dpop_jkt")
        if jkt is not None and not _JKT.fullmatch(jkt):
            # RFC 9449 section 10: a key thumbprint (SHA-256, base64url).
            raise InvalidRequestError("dpop_jkt must be a JWK SHA-256 thumbprint.")


class HubOpenIDCode(OpenIDCode):
    """ID tokens signed with the hub's current key, carrying ``sid`` for logout."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        # A nonce only matters to its relying party; reuse is the RP's bug, not an attack on us.
        return False

    def resolve_client_private_key(self, client: Any) -> Any:
        return self.provider.keys.signing_key(self.get_client_algorithm(client))

    def get_client_algorithm(self, client: Any) -> str:
        return client.id_token_signed_response_alg or "RS256"

    def get_encode_header(self, client: Any) -> dict[str, str]:
        key = self.resolve_client_private_key(client)
        return {"alg": self.get_client_algorithm(client), "kid": key.kid, "typ": "JWT"}

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        now = int(utcnow().timestamp())
        return {"iss": self.provider.issuer, "aud": client.client_id, "iat": now, "exp": now + self.provider.settings.id_token_ttl}

    def get_authorization_code_claims(self, authorization_code: IssuedCode) -> dict[str, Any]:
        claims = super().get_authorization_code_claims(authorization_code)
        if authorization_code.row.sid:
            claims["sid"] = authorization_code.row.sid
        return claims

    def generate_user_info(self, user: Account, scope: str) -> UserInfo:
        # Claims are released from userinfo; the ID token carries identity only (OIDC Core 5.4).
        return UserInfo(sub=user.sub)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    AUTHORIZATION_CODE_LENGTH = 43

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: Any) -> str:
        redirect_uri = request.payload.redirect_uri
        if not redirect_uri:
            raise InvalidRequestError("Missing 'redirect_uri' in request.")
        if not client.check_redirect_uri(redirect_uri):
            raise InvalidRequestError("The redirect_uri is not registered for this client.")
        return redirect_uri

    def save_authorization_code(self, code: str, request: Any) -> None:
        hub = request.hub
        now = utcnow()
        data = request.payload.data
        db().add(
            AuthorizationCode(
                code_hash=digest(code),
                service_id=request.client.id,
                account_id=request.user.id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                nonce=data.get("nonce"),
                code_challenge=data["code_challenge"],
                code_challenge_method=data.get("code_challenge_method", "S256"),
                auth_time=hub["auth_time"],
                sid=hub.get("sid"),
                amr=hub.get("amr", "pwd"),
                dpop_jkt=data.get("dpop_jkt") or None,
                created_at=now,
                expires_at=now + dt.timedelta(seconds=self.server.settings.authorization_code_ttl),
            )
        )

    def query_authorization_code(self, code: str, client: Any) -> IssuedCode | None:
        row = db().scalar(
            select(AuthorizationCode).where(
                AuthorizationCode.code_hash == digest(code), AuthorizationCode.service_id == client.id
            )
        )
        if row is None:
            return None
        if row.used_at is not None:
            # RFC 6749 section 4.1.2: a code used twice revokes what it issued.
            if row.grant_id:
                revoked = revoke_grant(row.grant_id)
                log.warning("authorization code replayed; revoked %d tokens of its grant", revoked)
            return None
        if row.expires_at <= utcnow():
            return None
        return IssuedCode(row)

    def delete_authorization_code(self, authorization_code: IssuedCode) -> None:
        authorization_code.row.used_at = utcnow()

    def authenticate_user(self, authorization_code: IssuedCode) -> Account | None:
        account = db().get(Account, authorization_code.row.account_id)
        if account is None or not account.may_be_shared:
            return None
        return account


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        # Inside a transaction the row is locked; with atomic rotation the spending statement
        # itself decides which of two concurrent uses wins.
        atomic = bool(self.request.hub.get("atomic_rotation"))
        token = find_stored_token(refresh_token, self.server.query_client_by_id, "refresh_token", for_update=not atomic)
        if token is None or token.kind != "refresh_token":
            return None
        row = token.row
        if row.refresh_used_at is not None:
            # RFC 9700 section 4.14.2: reuse of a rotated refresh token revokes the family.
            revoked = revoke_grant(row.grant_id)
            log.warning("refresh token reused; revoked %d tokens of its grant", revoked)
            return None
        if row.revoked_at is not None or token.is_expired():
            return None
        if row.account_id is None or not token.consented:
            return None
        return token

    def authenticate_user(self, refresh_token: IssuedToken) -> Account | None:
        account = refresh_token.get_user()
        if account is None or not account.may_be_shared:
            return None
        return account

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        if refresh_token.row.refresh_used_at is None:  # not spent by an atomic rotation already
            refresh_token.row.refresh_used_at = utcnow()


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_requested_scope(self) -> None:
        super().validate_requested_scope()
        # A service gets no scope it is not registered for (authlib checks only that the hub
        # supports it).
        if set(scopes.split(self.request.payload.scope)) - set(scopes.split(self.request.client.scope)):
            raise InvalidScopeError()
