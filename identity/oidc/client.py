"""A member service as authlib sees it: an OAuth 2 client, confidential (a secret, or
private_key_jwt) or public (``none``: a native app or a browser app, which can keep no secret)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin

from identity.db.models import Service
from identity.oidc import redirects
from identity.oidc import scopes as scope_names
from identity.tokens import matches


class AuthMethod(StrEnum):
    """How a service authenticates to the token, revocation and introspection endpoints (the
    names of RFC 7591 and OIDC Core 9; stored as these strings)."""

    NONE = "none"
    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"
    PRIVATE_KEY_JWT = "private_key_jwt"

    @property
    def has_secret(self) -> bool:
        return self in (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST)


#: The two ways of sending a secret are interchangeable: services registered before the method
#: was recorded used either, and which one carries the secret changes nothing about its strength.
SECRET_METHODS = frozenset({AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST})


@dataclass(frozen=True)
class ServiceClient(ClientMixin):
    id: int
    client_id: str
    name: str
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    backchannel_logout_uri: str | None
    scope: str
    grant_types: tuple[str, ...]
    id_token_signed_response_alg: str
    #: Run by the hub's operators (the support console): no consent screen, no link.
    first_party: bool = False
    token_endpoint_auth_method: AuthMethod = AuthMethod.CLIENT_SECRET_BASIC
    #: ``web`` or ``native`` (RFC 8252: loopback redirect URIs match on any port).
    application_type: str = "web"
    #: private_key_jwt: the service's public keys, inline or where to fetch them.
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    #: Authorization requests only through PAR (RFC 9126 section 6).
    require_par: bool = False
    #: Tokens only bound to a DPoP key (RFC 9449): a token request without a proof is refused.
    require_dpop: bool = False
    #: Authorization requests only as signed request objects (RFC 9101 section 10.5).
    require_signed_request_object: bool = False
    #: Disabled by an operator: no sign-ins, no client authentication, its tokens refused.
    disabled: bool = False
    #: The secret before the last rotation, accepted until it expires.
    previous_secret_hash: str | None = None
    previous_secret_expires_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: Service) -> ServiceClient:
        return cls(
            id=row.id,
            client_id=row.client_id,
            name=row.name,
            secret_hash=row.secret_hash,
            redirect_uris=tuple(row.redirect_uris),
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
            backchannel_logout_uri=row.backchannel_logout_uri,
            scope=row.scope,
            grant_types=tuple(row.grant_types),
            id_token_signed_response_alg=row.id_token_signed_response_alg,
            first_party=bool(row.first_party),
            token_endpoint_auth_method=AuthMethod(row.token_endpoint_auth_method),
            application_type=row.application_type,
            jwks=row.jwks,
            jwks_uri=row.jwks_uri,
            require_par=bool(row.require_par),
            require_dpop=bool(row.require_dpop),
            require_signed_request_object=bool(row.require_signed_request_object),
            disabled=row.disabled_at is not None,
            previous_secret_hash=row.previous_secret_hash,
            previous_secret_expires_at=row.previous_secret_expires_at,
        )

    @property
    def public(self) -> bool:
        """A public client (RFC 6749 section 2.1): it holds no credential at all."""
        return self.token_endpoint_auth_method is AuthMethod.NONE

    @property
    def client_metadata(self) -> dict[str, object]:
        return {
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "backchannel_logout_uri": self.backchannel_logout_uri,
        }

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        # redirect_uri is always required: the hub never guesses where to send a code.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(scope_names.split(self.scope))
        return scope_names.join([s for s in scope_names.split(scope) if s in allowed])

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string comparison (RFC 9700 section 2.1), but for a native app's loopback port.
        native = self.application_type == "native"
        return any(redirects.matches(r, redirect_uri, native=native) for r in self.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is not None and matches(client_secret, self.secret_hash):
            return True
        # During a rotation's overlap the replaced secret works too, until it expires.
        return (
            self.previous_secret_hash is not None
            and self.previous_secret_expires_at is not None
            and self.previous_secret_expires_at > dt.datetime.now(dt.UTC)
            and matches(client_secret, self.previous_secret_hash)
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # Each endpoint lists the methods it takes (introspection takes no "none"); a service
        # authenticates only with its own.
        if self.token_endpoint_auth_method in SECRET_METHODS:
            return method in SECRET_METHODS
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types
