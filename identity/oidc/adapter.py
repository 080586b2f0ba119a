"""The aiohttp side of authlib: an aiohttp request becomes an ``OAuth2Request``, and authlib's
``(status, body, headers)`` becomes an aiohttp response. Nothing else crosses this line."""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import (
    InsecureTransportError,
    MissingAuthorizationError,
    UnsupportedTokenTypeError,
)
from authlib.oauth2.rfc6750.errors import InsufficientScopeError
from multidict import MultiDict

from identity.errors import BadInput
from identity.oidc.client_auth import SIGNING_ALGORITHMS


class _Payload(OAuth2Payload):
    def __init__(self, values: MultiDict[str]) -> None:
        self._values = values
        self._data = {k: values.getone(k) for k in values.keys()}
        lists: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in values.items():
            lists[key].append(value)
        self._datalist = lists

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


@functools.lru_cache(maxsize=64)
def _secure_base(base: str) -> str:
    """``base`` (an issuer: scheme, host and port) once authlib has found its transport secure
    (https, or http on a loopback address), else authlib's ``InsecureTransportError``."""
    InsecureTransportError.check(base)
    return base


class HubOAuth2Request(OAuth2Request):
    """An authlib request built from data already read off the wire (no I/O inside authlib).

    Every request of a hub shares its issuer's scheme, host and port, so authlib's transport
    check (a URL split, and for http an IP address parsed, per request) runs once per issuer;
    the attributes are those authlib's own ``__init__`` sets
    (``tests/unit/test_oauth2_request.py`` compares the two)."""

    def __init__(
        self,
        method: str,
        base: str,
        path_qs: str,
        headers: Any,
        query: Iterable[tuple[str, str]] = (),
        form: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.uri = _secure_base(base) + path_qs
        self.method = method
        self.headers = headers
        self._body = None
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None
        self._args: MultiDict[str] = MultiDict(query)
        self._form: MultiDict[str] = MultiDict(form)
        if self._args:
            merged: MultiDict[str] = self._args.copy()
            merged.extend(self._form)
        else:
            merged = self._form  # a POST's parameters are its form's (the payload only reads them)
        self.payload = _Payload(merged)
        #: Hub-specific context for the grant (browser session, auth_time, ...).
        self.hub: dict[str, Any] = {}

    @property
    def args(self) -> MultiDict[str]:
        return self._args

    @property
    def form(self) -> MultiDict[str]:
        return self._form


def _text_items(values: Any) -> list[tuple[str, str]]:
    items = [(k, v) for k, v in values.items() if isinstance(v, str)]
    if any("\x00" in k or "\x00" in v for k, v in items):
        raise BadInput("NUL in a parameter")
    return items


async def read_request(request: web.Request, issuer: str) -> HubOAuth2Request:
    """Read query and (form) body, then build the authlib request against the issuer URL."""
    form: list[tuple[str, str]] = []
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        form = _text_items(await request.post())
    return HubOAuth2Request(
        request.method,
        issuer,
        request.path_qs,
        request.headers,
        query=_text_items(request.query),
        form=form,
    )


def _json(body: dict[str, Any]) -> bytes:
    """orjson: the token and introspection answers are the hub's hottest bodies, and it encodes
    them in a fifteenth of the standard library's time. What it refuses (a lone surrogate a
    client sent, echoed in an error) the standard library escapes, as before."""
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


def to_response(status: int, body: Any, headers: list[tuple[str, str]]) -> web.Response:
    content_type = None
    others: list[tuple[str, str]] = []
    for name, value in headers:
        if name.lower() == "content-type":
            if content_type is None:  # the first stands
                content_type = value
        else:
            others.append((name, value))
    if isinstance(body, dict):
        content_type = "application/json"
        response = web.Response(status=status, body=_json(body), content_type=content_type)
    else:
        response = web.Response(status=status, text=body or "")
        if content_type:
            response.content_type = content_type.split(";")[0]
    response_headers = response.headers
    for name, value in others:
        response_headers[name] = value  # as a dict of them would: the last of a name stands
    if status in (200, 201, 400, 401) and content_type and content_type.startswith("application/json"):
        response_headers.setdefault("Cache-Control", "no-store")
        response_headers.setdefault("Pragma", "no-cache")
    return response


def dpop_challenge() -> str:
    return f'DPoP algs="{" ".join(SIGNING_ALGORITHMS)}"'


def bearer_error(error: OAuth2Error) -> web.Response:
    """An RFC 6750 section 3 error: every refusal carries a ``WWW-Authenticate: Bearer`` challenge."""
    status, payload, headers = error()
    # json_response sets the Content-Type itself and refuses a second one.
    kept = {k: v for k, v in headers if k.lower() != "content-type"}
    if isinstance(error, (MissingAuthorizationError, UnsupportedTokenTypeError)):
        # No token was sent: the challenges carry no error code (RFC 6750 section 3.1), and
        # name the DPoP scheme with its algorithms (RFC 9449 section 7.1).
        kept["WWW-Authenticate"] = f"Bearer, {dpop_challenge()}"
    elif isinstance(error, InsufficientScopeError):
        kept["WWW-Authenticate"] = 'Bearer error="insufficient_scope", scope="openid"'
    return web.json_response(payload, status=status, headers=kept | {"Cache-Control": "no-store", "Pragma": "no-cache"})
