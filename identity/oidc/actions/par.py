"""The pushed authorization request endpoint (RFC 9126), as a list of steps: authenticate the
service as at the token endpoint, check its request as /authorize would, keep it, and answer
``201`` with the ``request_uri`` the browser will carry (``identity.oidc.pushed``)."""

from __future__ import annotations

from aiohttp import web
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError

from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.oidc import pushed
from identity.oidc.actions.token import client_keys_ready, form_only
from identity.oidc.adapter import HubOAuth2Request, read_request, to_response
from identity.oidc.grants import CLIENT_AUTH_METHODS


async def pushed_authorization_request(request: web.Request) -> web.StreamResponse:
    if (bad := form_only(request)) is not None:
        return bad
    provider = request.config_dict[PROVIDER]
    issuer = request.config_dict[SETTINGS].issuer
    oauth_request = await read_request(request, issuer)
    await client_keys_ready(request, oauth_request)

    def push() -> web.StreamResponse:
        try:
            client = provider.authenticate_client(oauth_request, CLIENT_AUTH_METHODS, "par")
            params = [(k, v) for k, v in oauth_request.form.items() if k not in pushed.CLIENT_AUTH_PARAMS]
            stated = [v for k, v in params if k == "client_id"]
            if any(v != client.client_id for v in stated):
                raise InvalidRequestError("client_id does not name the authenticated service.")
            if not stated:
                params.append(("client_id", client.client_id))
            if "request_uri" in oauth_request.form:
                raise InvalidRequestError("request_uri may not be pushed (RFC 9126 section 2.1).")
            # The same checks as /authorize (before the person is involved).
            provider.get_consent_grant(HubOAuth2Request("GET", issuer + "/authorize", request.headers, query=params))
        except OAuth2Error as error:
            error.redirect_uri = None  # answered here, as JSON, never by redirect
            return to_response(*error())
        request_uri = pushed.store(client.id, params)
        return to_response(201, {"request_uri": request_uri, "expires_in": pushed.EXPIRES_IN}, [])

    async with request.config_dict[DB].begin() as db:
        return await provider.run(db, push)
