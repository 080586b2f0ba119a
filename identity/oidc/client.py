"""A member service as authlib sees it: a confidential OAuth 2 client."""

from __future__ import annotations

from dataclasses import dataclass

from authlib.oauth2.rfc6749 import ClientMixin

from identity.db.models import Service
from identity.oidc import scopes as scope_names
from identity.tokens import matches


@dataclass(frozen=True)
class ServiceClient(ClientMixin):
    id: int
    client_id: str
    name: str
    secret_hash: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    backchannel_logout_uri: str | None
    scope: str
    grant_types: tuple[str, ...]
    id_token_signed_response_alg: str
    #: Run by the hub's operators (the support console): no consent screen, no link.
    first_party: bool = False

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
        )

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
        # Exact string comparison (RFC 9700 section 2.1).
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return matches(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types
