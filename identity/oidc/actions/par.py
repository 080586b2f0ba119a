"""The pushed authorization request endpoint (RFC 9126), as a list of steps: authenticate the
service as at the token endpoint, check its request as /authorize would, keep it, and answer
``201`` with the ``request_uri`` the browser will carry (``identity.oidc.pushed``)."""

from __future__ import annotations

from aiohttp import web
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import RequestNotSupportedError

from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.oidc import dpop, pushed, request_objects
from identity.oidc.actions.token import client_keys_ready, form_only, request_object_keys_ready
from identity.oidc.client import ServiceClient
from identity.oidc.adapter import HubOAuth2Request, read_request, to_response
from identity.oidc.grants import CLIENT_AUTH_METHODS


async def pushed_authorization_request(request: web.Request) -> web.StreamResponse:
    if (bad := form_only(request)) is not None:
        return bad
    provider = request.config_dict[PROVIDER]
    issuer = request.config_dict[SETTINGS].issuer
    oauth_request = await read_request(request, issuer)
    await client_keys_ready(request, oauth_request)
    request_object = oauth_request.form.get("request")
    if request_object is not None and (found := request_objects.unverified(request_object)) is not None:
        stated = found[1].get("client_id") or oauth_request.form.get("client_id")
        if isinstance(stated, str):
            await request_object_keys_ready(request, stated, request_object)

    def push() -> web.StreamResponse:
        try:
            # DPoP at PAR (RFC 9449 section 10.1): the code will be bound to the proof's key.
            proof = dpop.from_request(oauth_request)
            client = provider.authenticate_client(oauth_request, CLIENT_AUTH_METHODS, "par")
            params = [(k, v) for k, v in oauth_request.form.items() if k not in pushed.CLIENT_AUTH_PARAMS]
            if request_object is not None:
                params = _inside(request_object, client, params)
            elif client.require_signed_request_object:
                raise InvalidRequestError("This service must send its requests as signed request objects.")
            if proof is not None:
                dpop.remember(proof)
                stated_jkt = [v for k, v in params if k == "dpop_jkt"]
                if any(v != proof.jkt for v in stated_jkt):
                    raise dpop.InvalidProof("dpop_jkt does not name the key of the DPoP proof.")
                if not stated_jkt:
                    params.append(("dpop_jkt", proof.jkt))
            stated = [v for k, v in params if k == "client_id"]
            if any(v != client.client_id for v in stated):
                raise InvalidRequestError("client_id does not name the authenticated service.")
            if not stated:
                params.append(("client_id", client.client_id))
            if "request_uri" in oauth_request.form:
                raise InvalidRequestError("request_uri may not be pushed (RFC 9126 section 2.1).")
            # The same checks as /authorize (before the person is involved).
            provider.get_consent_grant(HubOAuth2Request("GET", issuer, "/authorize", request.headers, query=params))
        except OAuth2Error as error:
            error.redirect_uri = None  # answered here, as JSON, never by redirect
            return to_response(*error())
        request_uri = pushed.store(client.id, params)
        return to_response(201, {"request_uri": request_uri, "expires_in": pushed.EXPIRES_IN}, [])

    def _inside(request_object: str, client: ServiceClient, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """RFC 9126 section 3 with RFC 9101: a signed request object's parameters replace the
        pushed ones; an unsigned one is refused."""
        if not request_objects.is_signed(request_object):
            raise RequestNotSupportedError("Unsigned request objects are not supported.")
        inside = request_objects.verify(request_object, client, provider.client_keys.keys_for(client), issuer)
        return [("client_id", client.client_id), *((k, v) for k, v in inside if k != "client_id")]

    async with request.config_dict[DB].begin() as db:
        return await provider.run(db, push)
