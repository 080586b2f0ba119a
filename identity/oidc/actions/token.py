"""Token, revocation and introspection endpoints: authlib does the protocol; each request is
one transaction, committed even when authlib answers with an error, because some errors are
themselves decisions to keep (a replayed code or reused refresh token revokes its grant)."""

from __future__ import annotations

from aiohttp import web
from authlib.oauth2 import OAuth2Error

from identity.appkeys import DB, HTTP, HUB_METRICS, PROVIDER, SETTINGS
from identity.db import dialect
from identity.db.engine import autocommit
from identity.oidc import client_keys, dpop, request_objects
from identity.oidc.adapter import HubOAuth2Request, read_request, to_response
from identity.oidc.service_tokens import PREFIX as SERVICE_TOKEN_PREFIX


def form_only(request: web.Request) -> web.Response | None:
    if request.content_type != "application/x-www-form-urlencoded":
        return web.json_response(
            {"error": "invalid_request", "error_description": "Send the parameters as application/x-www-form-urlencoded."},
            status=400,
            headers={"Cache-Control": "no-store"},
        )
    return None


async def client_keys_ready(request: web.Request, oauth_request: HubOAuth2Request) -> None:
    """A private_key_jwt service's published keys, fetched if needed, before authlib runs."""
    if oauth_request.form.get("client_assertion_type") != client_keys.ASSERTION_TYPE:
        return  # a secret, or no client authentication: no keys to fetch
    provider = request.config_dict[PROVIDER]
    fetch = client_keys.fetcher(request.config_dict[HTTP], request.config_dict[SETTINGS].jwks_uri_timeout)
    await client_keys.prepare(provider.client_keys, request.config_dict[DB], oauth_request.form, fetch)


async def request_object_keys_ready(request: web.Request, client_id: str, request_object: str) -> None:
    """The keys a service's request object names, fetched from its jwks_uri if needed."""
    found = request_objects.unverified(request_object)
    if found is None:
        return
    kid = found[0].get("kid")
    provider = request.config_dict[PROVIDER]
    fetch = client_keys.fetcher(request.config_dict[HTTP], request.config_dict[SETTINGS].jwks_uri_timeout)
    await client_keys.ensure(provider.client_keys, request.config_dict[DB], client_id, kid if isinstance(kid, str) else None, fetch)


def in_memory_grant(oauth_request: HubOAuth2Request) -> bool:
    """A ``client_credentials`` grant without DPoP needs nothing but the (cached) client: its
    token is self-contained and stored nowhere."""
    return oauth_request.payload.grant_type == "client_credentials" and oauth_request.hub.get("dpop") is None


async def token(request: web.Request) -> web.StreamResponse:
    if (bad := form_only(request)) is not None:
        return bad
    config = request.config_dict  # a new view of the apps' chain at each access: taken once
    provider = config[PROVIDER]
    sessions = config[DB]
    oauth_request = await read_request(request, config[SETTINGS].issuer)
    # DPoP (RFC 9449): a proof, if sent, is checked first, with one of the hub's nonces.
    try:
        proof = dpop.from_request(oauth_request, nonces=provider.dpop_nonces)
    except OAuth2Error as error:
        return to_response(*error())
    oauth_request.hub["dpop"] = proof
    await client_keys_ready(request, oauth_request)
    # Refresh on Postgres: every write is one self-contained statement (the rotation is a single
    # data-modifying CTE), so no transaction round trips are needed.
    alone = oauth_request.payload.grant_type == "refresh_token" and dialect.opens_postgres(sessions)
    oauth_request.hub["atomic_rotation"] = alone

    def issue() -> web.StreamResponse:
        if proof is not None:
            try:
                dpop.remember(proof)
            except OAuth2Error as error:
                return to_response(*error())
        return provider.create_token_response(oauth_request)

    response = None
    if in_memory_grant(oauth_request):
        response = provider.run_in_memory(issue)
    if response is None:
        async with autocommit(sessions) if alone else sessions.begin() as db:
            response = await provider.run(db, issue)
    if response.status == 200:
        config[HUB_METRICS].token_issued(oauth_request.payload.grant_type)
    if proof is not None:
        response.headers["DPoP-Nonce"] = provider.dpop_nonces.current()
    return response


async def revoke(request: web.Request) -> web.StreamResponse:
    if (bad := form_only(request)) is not None:
        return bad
    provider = request.config_dict[PROVIDER]
    oauth_request = await read_request(request, request.config_dict[SETTINGS].issuer)
    await client_keys_ready(request, oauth_request)
    async with request.config_dict[DB].begin() as db:
        response = await provider.run(db, lambda: provider.create_endpoint_response("revocation", oauth_request))
    if (revoked := oauth_request.hub.get("revoked_service_token")) is not None:
        # Committed: answered once every hub process has been told (see identity.oidc.revocations).
        await provider.revocations.heard_back(*revoked)
    return response


async def introspect(request: web.Request) -> web.StreamResponse:
    if (bad := form_only(request)) is not None:
        return bad
    config = request.config_dict
    provider = config[PROVIDER]
    sessions = config[DB]
    oauth_request = await read_request(request, config[SETTINGS].issuer)
    await client_keys_ready(request, oauth_request)
    answer = lambda: provider.create_endpoint_response("introspection", oauth_request)  # noqa: E731
    if oauth_request.form.get("token", "").startswith(SERVICE_TOKEN_PREFIX):
        # A service token of a cached client, its revocation known in memory: no database.
        if (response := provider.run_in_memory(answer)) is not None:
            return response
    # Introspection only reads (the client, the token, its revocation): on Postgres each read
    # stands alone, sparing a transaction's BEGIN and COMMIT round trips.
    async with autocommit(sessions) if dialect.opens_postgres(sessions) else sessions.begin() as db:
        return await provider.run(db, answer)
