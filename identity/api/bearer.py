"""Bearer tokens on the JSON API (RFC 6750): a person's access token, or a service's own
client-credentials token. Errors are JSON with a ``WWW-Authenticate`` challenge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from authlib.oauth2 import OAuth2Error
from sqlalchemy.ext.asyncio import AsyncSession

from identity.appkeys import PROVIDER, SETTINGS
from identity.db.models import Account
from identity.oidc.adapter import bearer_error, read_request
from identity.oidc.client import ServiceClient

NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class Caller:
    client: ServiceClient
    scope: str
    account: Account | None


class Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def problem(status: int, error: str, description: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, "error_description": description, **extra}, status=status, headers=NO_STORE)


async def caller(request: web.Request, db: AsyncSession, *, person: bool) -> Caller:
    """The validated caller: with ``person``, an access token a person granted (``openid``);
    otherwise a service's client-credentials token. Raises :class:`Refused`."""
    provider = request.config_dict[PROVIDER]
    oauth_request = await read_request(request, request.config_dict[SETTINGS].issuer)

    def validate() -> Caller:
        token = provider.resource.validate_request(["openid"] if person else [], oauth_request)
        account = token.get_user()
        return Caller(client=token.get_client(), scope=token.get_scope(), account=account)

    try:
        found = await provider.run(db, validate)
    except OAuth2Error as error:
        raise Refused(bearer_error(error)) from None
    if person and (found.account is None or not found.account.may_be_shared):
        raise Refused(_invalid("The access token is not valid for this person."))
    if not person and found.account is not None:
        raise Refused(_invalid("Use a client_credentials token of the service, not a person's token."))
    return found


def _invalid(description: str) -> web.Response:
    return web.json_response(
        {"error": "invalid_token", "error_description": description},
        status=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"', **NO_STORE},
    )
