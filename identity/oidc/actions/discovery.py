"""OpenID Provider metadata (OIDC Discovery 1.0, RFC 8414) and the public JWKS."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from identity import i18n
from identity.appkeys import PROVIDER, SETTINGS
from identity.oidc import assurance, dpop, request_objects, scopes
from identity.oidc.client_auth import SIGNING_ALGORITHMS
from identity.oidc.grants import CLIENT_AUTH_METHODS, INTROSPECTION_AUTH_METHODS
from identity.oidc.keys import ALGORITHMS


def metadata(issuer: str) -> dict[str, Any]:
    claims = sorted({c for names in scopes.SCOPE_CLAIMS.values() for c in names} | {"iss", "aud", "exp", "iat", "auth_time", "nonce", "sid", "at_hash", "acr", "amr"})
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "end_session_endpoint": f"{issuer}/end-session",
        "pushed_authorization_request_endpoint": f"{issuer}/par",
        # Each service may be made to push its requests (services add --require-par).
        "require_pushed_authorization_requests": False,
        "scopes_supported": list(scopes.SUPPORTED_SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ALGORITHMS),
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": list(INTROSPECTION_AUTH_METHODS),
        "introspection_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": claims,
        "acr_values_supported": list(assurance.ACR_VALUES),
        "claims_parameter_supported": False,
        # Signed request objects by value (RFC 9101); the only request_uri taken is PAR's.
        "request_parameter_supported": True,
        "request_object_signing_alg_values_supported": list(request_objects.ALGORITHMS),
        "request_uri_parameter_supported": False,
        # Each service may be made to sign its requests (services add --require-signed-request-object).
        "require_signed_request_object": False,
        "dpop_signing_alg_values_supported": list(dpop.ALGORITHMS),
        "prompt_values_supported": ["none", "login", "consent"],
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
        # The languages of the pages (ui_locales picks one, OIDC Core 3.1.2.1) and of the words
        # the hub itself puts in what it returns; the person's own details stay as they typed them.
        "ui_locales_supported": list(i18n.LANGUAGES),
        "claims_locales_supported": list(i18n.LANGUAGES),
    }


async def openid_configuration(request: web.Request) -> web.Response:
    return web.json_response(
        metadata(request.config_dict[SETTINGS].issuer), headers={"Cache-Control": "public, max-age=3600"}
    )


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(
        request.config_dict[PROVIDER].keys.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )
