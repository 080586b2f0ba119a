"""The UserInfo endpoint (OIDC Core 5.3): the claims the token's scopes release, nothing else."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from authlib.oauth2 import OAuth2Error

from identity.accounts.claims import user_claims
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.db.engine import autocommit
from identity.oidc.adapter import bearer_error, read_request


async def userinfo(request: web.Request) -> web.StreamResponse:
    provider = request.config_dict[PROVIDER]
    oauth_request = await read_request(request, request.config_dict[SETTINGS].issuer)
    async with autocommit(request.config_dict[DB]) as db:

        def claims() -> dict[str, Any]:
            token = provider.resource.validate_request(["openid"], oauth_request)
            account = token.get_user()
            if account is None or not account.may_be_shared:
                raise _InvalidToken()
            return user_claims(account, token.get_scope())

        try:
            body = await provider.run(db, claims)
        except OAuth2Error as error:
            return bearer_error(error)
    return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


class _InvalidToken(OAuth2Error):
    error = "invalid_token"
    description = "The access token is not valid for this person."
    status_code = 401

    def get_headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", 'Bearer error="invalid_token"'), ("Content-Type", "application/json")]
