"""The authorization server: authlib's ``AuthorizationServer`` wired to the hub's storage.

authlib is synchronous. Each entry point runs inside one ``AsyncSession.run_sync`` call (see
:meth:`Provider.run`), which hands authlib a synchronous ``Session`` whose I/O still runs on
the event loop; the callbacks reach it through :data:`identity.oidc.records.current_db`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.rpinitiated import EndSessionEndpoint
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from identity.db.models import RevokedServiceToken, Service, Token, utcnow
from identity.oidc import dpop, scopes
from identity.oidc.adapter import HubOAuth2Request, to_response
from identity.oidc.client import ServiceClient
from identity.oidc.client_auth import PrivateKeyJWT
from identity.oidc.client_keys import ClientKeys
from identity.oidc.grants import (
    CLIENT_AUTH_METHODS,
    INTROSPECTION_AUTH_METHODS,
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    HubOpenIDCode,
    UnsignedRequestObjects,
    RefreshTokenGrant,
    S256Required,
)
from identity.oidc.keys import KeyRing
from identity.oidc.records import (
    NO_SESSION,
    IssuedToken,
    NeedsDatabase,
    ServiceTokenRow,
    current_db,
    db,
    find_stored_token,
    revoke_grant,
)
from identity.oidc.revocations import RevokedServiceTokens, notify_statement
from identity.oidc.service_tokens import PREFIX as SERVICE_TOKEN_PREFIX
from identity.oidc.service_tokens import ServiceTokenCodec
from identity.settings import Settings
from identity.tokens import digest, new_secret

T = TypeVar("T")
log = logging.getLogger(__name__)

CLIENT_CACHE_SECONDS = 5.0


#: Whether a service token was revoked: one indexed read, built once (this is on the path of
#: every introspection and every call a service makes to the hub's API).
_REVOKED = select(RevokedServiceToken.token_id).where(RevokedServiceToken.token_id == bindparam("token_id"))


class Provider(AuthorizationServer):
    def __init__(self, settings: Settings, keys: KeyRing, service_tokens: ServiceTokenCodec, dpop_nonces: dpop.Nonces) -> None:
        super().__init__(scopes_supported=list(scopes.SUPPORTED_SCOPES))
        self.settings = settings
        self.issuer = settings.issuer
        self.keys = keys
        self.service_tokens = service_tokens
        self.revocations = RevokedServiceTokens()
        self.dpop_nonces = dpop_nonces
        self._clients: dict[str, tuple[float, ServiceClient | None]] = {}
        self._client_ids: dict[int, str] = {}
        self.client_keys = ClientKeys(ttl=settings.jwks_uri_cache_ttl, refetch_interval=settings.jwks_uri_refetch_interval)
        self.register_client_auth_method(PrivateKeyJWT.CLIENT_AUTH_METHOD, PrivateKeyJWT(self))
        self.register_token_generator("default", self._generate_token)
        self.register_grant(AuthorizationCodeGrant, [UnsignedRequestObjects(), S256Required(required=True), HubOpenIDCode(self)])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        self.register_endpoint(EndSession)
        self.register_extension(_Issuer)
        self.resource = ResourceProtector()
        self.resource.register_token_validator(_BearerValidator(self))
        self.resource.register_token_validator(_DPoPValidator(self))

    async def run(self, session: AsyncSession, fn: Callable[[], T]) -> T:
        """Run an authlib entry point against ``session`` (the caller owns the transaction)."""

        def call(sync_session: Session) -> T:
            reset = current_db.set(sync_session)
            try:
                return fn()
            finally:
                current_db.reset(reset)

        return await session.run_sync(call)

    def run_in_memory(self, fn: Callable[[], T]) -> T | None:
        """Run an authlib entry point without a session, for requests whose every answer is in
        memory (a cached client, a service token and its revocation): ``None`` when it reached
        for the database after all, having changed nothing, so the caller runs it with one.
        It spares the session, its connection and the thread-switching of :meth:`run`."""
        reset = current_db.set(NO_SESSION)
        try:
            return fn()
        except NeedsDatabase:
            return None
        finally:
            current_db.reset(reset)

    # authlib hooks -----------------------------------------------------------------

    def query_client(self, client_id: str) -> ServiceClient | None:
        now = time.monotonic()
        cached = self._clients.get(client_id)
        if cached and cached[0] > now:
            return cached[1]
        row = db().scalar(select(Service).where(Service.client_id == client_id))
        client = ServiceClient.from_row(row) if row else None
        if len(self._clients) > 10_000:
            self._clients.clear()
        self._clients[client_id] = (now + CLIENT_CACHE_SECONDS, client)
        return client

    def authenticate_client(self, request: Any, methods: Any, endpoint: str = "token") -> Any:
        """authlib's client authentication, then: a disabled service is refused (after it proved
        who it is, so the reason can be told)."""
        client = super().authenticate_client(request, methods, endpoint)
        if client is not None and client.disabled:
            raise InvalidClientError(status_code=401, description="This service is disabled at the hub.")
        return client

    def query_client_by_id(self, service_id: int) -> ServiceClient | None:
        client_id = self._client_ids.get(service_id)
        if client_id is None:
            client_id = db().scalar(select(Service.client_id).where(Service.id == service_id))
            if client_id is None:
                return None
            self._client_ids[service_id] = client_id
        return self.query_client(client_id)

    def create_oauth2_request(self, request: HubOAuth2Request) -> HubOAuth2Request:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("the hub takes no JSON OAuth requests")

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Any:
        return to_response(status, body, headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def _generate_token(
        self,
        grant_type: str,
        client: ServiceClient,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        scope = scope or ""
        ttl = expires_in or self.settings.access_token_ttl
        if grant_type == "client_credentials":
            access = self.service_tokens.issue(client.client_id, scope, ttl, utcnow())
        else:
            access = new_secret()
        token: dict[str, Any] = {"token_type": "Bearer", "access_token": access, "expires_in": ttl, "scope": scope}
        wants_refresh = grant_type == "refresh_token" or "offline_access" in scopes.split(scope)
        if user is not None and include_refresh_token and wants_refresh and client.check_grant_type("refresh_token"):
            token["refresh_token"] = new_secret()
        return token

    def find_token(self, token_string: str, hint: str | None = None) -> IssuedToken | None:
        """A presented token of either kind, or None when it is not one of ours."""
        if not token_string.startswith(SERVICE_TOKEN_PREFIX):
            return find_stored_token(token_string, self.query_client_by_id, hint)
        content = self.service_tokens.read(token_string)
        client = self.query_client(content.client_id) if content else None
        if content is None or client is None:
            return None
        revoked = self.revocations.revoked(content.token_id)
        if revoked is None:  # the in-memory set is not live: ask the database
            revoked = db().execute(_REVOKED, {"token_id": content.token_id}).first() is not None
        row = ServiceTokenRow(
            grant_id=content.token_id,
            service_id=client.id,
            scope=content.scope,
            grant_scope=content.scope,
            issued_at=content.issued_at,
            access_expires_at=content.expires_at,
            revoked_at=content.issued_at if revoked else None,
            dpop_jkt=content.jkt,
        )
        return IssuedToken(row, client, "access_token", stateless=True)

    def _bind(self, token: dict[str, Any], request: HubOAuth2Request) -> str | None:
        """DPoP (RFC 9449): the key thumbprint the new tokens are bound to, if any, after the
        binding rules: a service registered with require_dpop sends a proof; a code issued for a
        key (``dpop_jkt``) and a public client's bound refresh token are spent with that key."""
        proof: dpop.Proof | None = request.hub.get("dpop")
        jkt = proof.jkt if proof else None
        if request.client.require_dpop and jkt is None:
            raise dpop.InvalidProof("This service must send a DPoP proof.")
        if request.authorization_code is not None:
            bound = request.authorization_code.row.dpop_jkt
            if bound and bound != jkt:
                raise InvalidGrantError("The code is bound to another DPoP key.")
        if request.refresh_token is not None and request.client.public:
            bound = request.refresh_token.row.dpop_jkt
            if bound and bound != jkt:
                raise InvalidGrantError("The refresh token is bound to another DPoP key.")
        if jkt is not None:
            token["token_type"] = "DPoP"
        return jkt

    def save_token(self, token: dict[str, Any], request: HubOAuth2Request) -> None:
        jkt = self._bind(token, request)
        if token["access_token"].startswith(SERVICE_TOKEN_PREFIX):
            if jkt is not None:  # self-contained: the binding goes inside it
                token["access_token"] = self.service_tokens.issue(
                    request.client.client_id, token.get("scope") or "", token["expires_in"], utcnow(), jkt=jkt
                )
            return  # nothing to store
        now = utcnow()
        scope = token.get("scope") or ""
        if request.refresh_token is not None:
            previous = request.refresh_token.row
            grant_id, sid, auth_time, grant_scope = previous.grant_id, previous.sid, previous.auth_time, previous.grant_scope
        elif request.authorization_code is not None:
            code = request.authorization_code.row
            grant_id, sid, auth_time, grant_scope = uuid.uuid4().hex, code.sid, code.auth_time, scope
            code.grant_id = grant_id
        else:
            grant_id, sid, auth_time, grant_scope = uuid.uuid4().hex, None, None, scope
        refresh = token.get("refresh_token")
        values = dict(
                grant_id=grant_id,
                access_hash=digest(token["access_token"]),
                refresh_hash=digest(refresh) if refresh else None,
                service_id=request.client.id,
                account_id=request.user.id if request.user is not None else None,
                scope=scope,
                grant_scope=grant_scope,
                sid=sid,
                auth_time=auth_time,
                issued_at=now,
                access_expires_at=now + dt.timedelta(seconds=token["expires_in"]),
                refresh_expires_at=now + dt.timedelta(seconds=self.settings.refresh_token_ttl) if refresh else None,
                dpop_jkt=jkt,
        )
        if request.refresh_token is not None and request.hub.get("atomic_rotation"):
            self._rotate(request.refresh_token, values, now)
        else:
            db().execute(insert(Token).values(**values))

    def _rotate(self, presented: IssuedToken, values: dict[str, Any], now: dt.datetime) -> None:
        """Spend the presented refresh token and store its successor in one statement (a
        data-modifying CTE): the successor exists only if this request is the one that spent
        the token, so a concurrent second use finds nothing and counts as a reuse."""
        previous = presented.row
        params = {"previous_id": previous.id, "spent_at": now, **{f"v_{c}": v for c, v in values.items()}}
        created = db().execute(_rotation(tuple(values)), params).first()
        if created is None:
            revoked = revoke_grant(previous.grant_id)
            log.warning("refresh token used twice at once; revoked %d tokens of its grant", revoked)
            raise InvalidGrantError()
        set_committed_value(previous, "refresh_used_at", now)


@functools.cache
def _rotation(columns: tuple[str, ...]) -> Any:
    """The rotation statement for a set of token columns, built once: only its parameters change
    from one refresh to the next, so SQLAlchemy neither rebuilds it nor recomputes its cache key."""
    t = Token.__table__
    spent = (
        update(t)
        .where(t.c.id == bindparam("previous_id"), t.c.refresh_used_at.is_(None), t.c.revoked_at.is_(None))
        .values(refresh_used_at=bindparam("spent_at", type_=t.c.refresh_used_at.type))
        .returning(t.c.id)
        .cte("spent")
    )
    row = select(*(bindparam(f"v_{c}", type_=t.c[c].type).label(c) for c in columns)).select_from(spent)
    return insert(t).from_select(list(columns), row).returning(t.c.id)


class _Issuer(IssuerParameter):
    """RFC 9207: ``iss`` in every authorization response."""

    def __init__(self, server: Provider) -> None:
        self.server = server
        self(server)

    def get_issuer(self) -> str:
        return self.server.issuer

    def add_issuer_parameter(self, authorization_server: Any, response: Any) -> None:
        location = response.headers.get("Location")
        if location:
            response.headers["Location"] = add_params_to_uri(location, {"iss": self.get_issuer()})


class _AnyHint:
    """RFC 7009 and RFC 7662 section 2.1: ``token_type_hint`` is only a hint, which the server
    MAY ignore; the hub searches every token type anyway. (authlib refuses an unknown hint with
    a 401 carrying no challenge, as if the client had failed to authenticate.)"""

    def check_params(self, request: Any, client: Any) -> None:
        if "token" not in request.form:
            raise InvalidRequestError("Missing 'token' in request.")


class Revocation(_AnyHint, RevocationEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return self.server.find_token(token_string, token_type_hint)

    def revoke_token(self, token: IssuedToken, request: Any) -> None:
        if token.stateless:
            if db().get(RevokedServiceToken, token.row.grant_id) is None:
                db().add(RevokedServiceToken(token_id=token.row.grant_id, expires_at=token.row.access_expires_at))
                if db().get_bind().dialect.name == "postgresql":
                    # Every hub process hears of it when, and only when, this commits.
                    statement, params = notify_statement(token.row.grant_id, token.row.access_expires_at)
                    db().execute(text(statement), params)
                request.hub["revoked_service_token"] = (token.row.grant_id, token.row.access_expires_at)
        elif token.kind == "refresh_token":
            # RFC 7009 section 2.1: revoking a refresh token revokes its grant's access tokens.
            revoke_grant(token.row.grant_id)
        elif token.row.revoked_at is None:
            token.row.revoked_at = utcnow()


class Introspection(_AnyHint, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = INTROSPECTION_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return self.server.find_token(token_string, token_type_hint)

    def check_permission(self, token: IssuedToken, client: ServiceClient, request: Any) -> bool:
        # A service may introspect only tokens issued to it.
        return token.check_client(client)

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        row = token.row
        user = token.get_user()
        if user is not None and not user.may_be_shared:
            # A child's account waiting for a guardian is shared with no service: its tokens
            # open nothing, so they are not active either.
            return {"active": False}
        payload: dict[str, Any] = {
            "active": True,
            "client_id": token.client.client_id if token.client else None,
            "scope": token.get_scope(),
            "token_type": ("DPoP" if row.dpop_jkt else "Bearer") if token.kind == "access_token" else "refresh_token",
            "exp": int(token.get_expires_at().timestamp()),
            "iat": int(row.issued_at.timestamp()),
            "iss": self.server.issuer,
        }
        if row.dpop_jkt and (token.kind == "access_token" or (token.client is not None and token.client.public)):
            payload["cnf"] = {"jkt": row.dpop_jkt}  # RFC 9449 section 6.2
        if user is not None:
            payload["sub"] = user.sub
            payload["aud"] = payload["client_id"]
        return payload


class EndSession(EndSessionEndpoint):
    def get_server_jwks(self) -> dict[str, Any]:
        return self.server.keys.jwks()

    def end_session(self, end_session_request: Any) -> None:
        # The hub ends the browser session itself, asynchronously, after validation.
        return None


class _BearerValidator(BearerTokenValidator):
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> IssuedToken | None:
        token = self.provider.find_token(token_string, "access_token")
        if token is None or token.kind != "access_token":
            return None
        return token

    def validate_token(self, token: IssuedToken | None, scopes: Any, request: Any) -> None:
        super().validate_token(token, scopes, request)
        if token is not None and token.row.dpop_jkt:
            # RFC 9449 section 7.2: a DPoP-bound token is no bearer token.
            raise InvalidTokenError(description="The access token is bound to a DPoP key: send it with Authorization: DPoP and a proof.")


class _DPoPValidator(_BearerValidator):
    """``Authorization: DPoP <token>`` with a ``DPoP`` proof of the key the token is bound to
    (RFC 9449 section 7.1): the proof names this request and hashes the token (``ath``)."""

    TOKEN_TYPE = "dpop"

    def validate_token(self, token: IssuedToken | None, scopes: Any, request: Any) -> None:
        try:
            # authlib's checks (active, scope), without the Bearer validator's refusal of bound tokens.
            BearerTokenValidator.validate_token(self, token, scopes, request)
        except InvalidTokenError as error:
            raise dpop.InvalidToken(error.description, resource=True) from None
        assert token is not None
        if not token.row.dpop_jkt:
            raise dpop.InvalidToken("The access token is not bound to a DPoP key: send it as a Bearer token.", resource=True)
        proof_text = dpop.proof_header(request.headers, resource=True)
        if proof_text is None:
            raise dpop.InvalidProof("Send a DPoP proof in the DPoP header.", resource=True)
        access_token = request.headers["Authorization"].split(None, 1)[1]
        proof = dpop.check(proof_text, method=request.method, url=request.uri, access_token=access_token, resource=True)
        if proof.jkt != token.row.dpop_jkt:
            raise dpop.InvalidToken("The access token is bound to another key.", resource=True)
        dpop.remember(proof, resource=True)

