"""SCIM 2.0 provisioning (RFC 7643, RFC 7644): the third channel of a member service, beside its
webhook and its topic. The hub is the SCIM client; the service runs the SCIM server.

What is sent is decided where the row is built (:mod:`sync.deliver`, :mod:`sync.notices`) and
written as a small JSON *intent* in the job's body (a ``put`` by :func:`put_intent`; a
``deactivate`` or ``delete`` by ``identity.notices.add_scim``); this module carries it out:

- ``put``: the person's User as the service may see it now. Its remembered SCIM ``id`` is
  patched; without one (or when the server no longer has it) the User whose ``externalId`` is
  the person's ``sub`` is looked for first, so a retry or a relink never makes a second User;
  only when there is none is it created (``POST /Users``). A change is a ``PATCH`` replacing the
  attributes mapped from the claims the service may see, and removing those whose claim is now
  empty; attributes of claims outside its scopes are never touched.
- ``deactivate`` (an unlink, a cancellation, a restriction): ``active: false``.
- ``delete`` (the person's hub account was erased): ``DELETE /Users/{id}``.

The answer means what a webhook's means (:mod:`sync.outcomes` decides): a 2xx settles, a 429
or 503 with ``Retry-After`` is not retried sooner than asked, anything else is retried on the
schedule. A User already gone is no failure of a ``deactivate`` or a ``delete``.

The hub authenticates with a bearer token: the service's fixed one, or one it gets from the
service's OAuth token endpoint with the client credentials grant (RFC 6749 section 4.4) and
keeps until shortly before it expires, or until the SCIM server answers 401 (:class:`Tokens`).

Requests go through :mod:`identity.outbound` (public addresses only, bounded answers, no
redirects): ``scim2-client`` builds and checks the requests and answers with ``scim2-models``,
through ``sync.scim_requests.OutboundSCIMClient``, an engine of it over that session. Those two
libraries build their models when imported (seconds of CPU in a process that has loaded the
hub), so ``sync.scim_requests`` is imported when a SCIM server is first called, not before."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from identity import outbound
from sync.webhooks import ADDRESS_NOT_ALLOWED, Outcome

__all__ = ["Tokens", "nested", "put_intent", "send", "user_attributes"]

#: The most of a SCIM answer that is read (a User, or a search answering one).
MAX_ANSWER_BYTES = 256 * 1024
#: The User attributes the hub writes (sub-attributes of ``name`` each on its own, so an empty
#: claim clears only its part), each from the claim it is made of: a service sees an attribute
#: only when it may see that claim.
ATTRIBUTES: dict[str, str] = {
    "name.formatted": "name",
    "name.givenName": "given_name",
    "name.familyName": "family_name",
    "displayName": "name",
    "emails": "email",
    "phoneNumbers": "phone_number",
    "addresses": "address",
    "locale": "locale",
    "timezone": "zoneinfo",
}
_ADDRESS = {"formatted": "formatted", "street_address": "streetAddress", "locality": "locality", "region": "region", "postal_code": "postalCode", "country": "country"}


def user_attributes(profile: dict[str, Any], sub: str) -> tuple[dict[str, Any], list[str]]:
    """The User attributes for ``profile`` (the claims one service may see, as
    :func:`sync.projection.profile` gives them: absent when outside its scopes, ``None`` when
    empty) by path, and the paths to clear (their claims visible but empty). ``userName`` is
    the email address when the service may see it, else the ``sub``; ``externalId`` is the ``sub``."""
    address = profile.get("address") or {}
    parts = {scim: address[oidc] for oidc, scim in _ADDRESS.items() if address.get(oidc)}
    values: dict[str, Any] = {
        "name.formatted": profile.get("name") or None,
        "name.givenName": profile.get("given_name") or None,
        "name.familyName": profile.get("family_name") or None,
        "displayName": profile.get("name") or None,
        "emails": [{"value": profile["email"], "primary": True}] if profile.get("email") else None,
        "phoneNumbers": [{"value": profile["phone_number"], "primary": True}] if profile.get("phone_number") else None,
        "addresses": [parts | {"primary": True}] if parts else None,
        "locale": profile.get("locale") or None,
        "timezone": profile.get("zoneinfo") or None,
    }
    attributes: dict[str, Any] = {"userName": profile.get("email") or sub, "externalId": sub, "active": True}
    clear = []
    for path, claim in ATTRIBUTES.items():
        if claim not in profile:
            continue  # outside the service's scopes: never written, never cleared
        if values[path] is None:
            clear.append(path)
        else:
            attributes[path] = values[path]
    return attributes, clear


def nested(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes by path as a resource (``name.givenName`` under ``name``)."""
    out: dict[str, Any] = {}
    for path, value in attributes.items():
        head, _, tail = path.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[head] = value
    return out


def put_intent(profile: dict[str, Any], sub: str, scim_id: str | None, *, activate: bool) -> str:
    """The ``put`` of the person's User. ``activate``: also set ``active: true`` on an existing
    User (a link or relink: its snapshot); a change leaves ``active`` as it is, so a change in
    flight while the person unlinks cannot undo the deactivation. A new User is made active."""
    attributes, clear = user_attributes(profile, sub)
    if not activate:
        attributes.pop("active")
    return json.dumps({"op": "put", "externalId": sub, "id": scim_id, "user": attributes, "clear": clear}, separators=(",", ":"), ensure_ascii=False)


async def send(http: aiohttp.ClientSession, base_url: str, token: str, body: str, *, timeout: aiohttp.ClientTimeout) -> Outcome:
    """Carry out one intent (a job's ``body``) at the service's SCIM server; what it came to.
    A ``put`` that succeeded says the User's SCIM ``id`` (``Outcome.resource_id``)."""
    from sync import scim_requests  # see the module's docstring

    return await scim_requests.send(http, base_url, token, body, timeout=timeout)


#: A token is not used in its last seconds (it may expire on the way).
TOKEN_MARGIN = 30.0
#: A token endpoint that says nothing of ``expires_in``: the token is kept this long.
DEFAULT_TOKEN_LIFETIME = 300.0


class _NoToken(Exception):
    """The token endpoint gave no token (its answer, never the secret, says why)."""


class Tokens:
    """The access tokens a worker got for services' SCIM servers, by service, until shortly
    before they expire. One request at a time per service."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[str, float]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def forget(self, service_id: int) -> None:
        """The SCIM server refused the token (401): a new one is fetched next time."""
        self._held.pop(service_id, None)

    async def get(
        self, http: aiohttp.ClientSession, service_id: int, token_url: str, client_id: str, secret: str, *, timeout: aiohttp.ClientTimeout
    ) -> str:
        async with self._locks.setdefault(service_id, asyncio.Lock()):
            held = self._held.get(service_id)
            if held is not None and held[1] > time.monotonic():
                return held[0]
            # RFC 6749 section 2.3.1: client id and secret form-encoded, then as HTTP Basic.
            basic = base64.b64encode(f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()
            answer = await outbound.post(
                http, token_url, data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}", "Accept": "application/json"}, timeout=timeout,
            )
            if answer.status != 200:
                raise _NoToken(f"the SCIM token endpoint answered HTTP {answer.status}")
            try:
                body = json.loads(answer.body)
                token = body["access_token"]
                lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
            except (ValueError, KeyError, TypeError):
                raise _NoToken("the SCIM token endpoint gave no access_token") from None
            if not isinstance(token, str) or not token:
                raise _NoToken("the SCIM token endpoint gave no access_token")
            self._held[service_id] = (token, time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN))
            return token


async def bearer(
    tokens: Tokens, http: aiohttp.ClientSession, service_id: int, token_url: str | None, client_id: str | None, credential: str,
    *, timeout: aiohttp.ClientTimeout,
) -> str | Outcome:
    """The bearer token to present: the fixed one, or one from the token endpoint; an
    :class:`Outcome` to record when none could be had."""
    if token_url is None or client_id is None:
        return credential
    try:
        return await tokens.get(http, service_id, token_url, client_id, credential, timeout=timeout)
    except _NoToken as exc:
        return Outcome("retry", str(exc))
    except outbound.AddressNotAllowed:
        return Outcome("retry", ADDRESS_NOT_ALLOWED.replace("the webhook's", "the SCIM token endpoint's"))
    except TimeoutError:
        return Outcome("retry", f"the SCIM token endpoint: no answer within {timeout.total:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome("retry", f"the SCIM token endpoint: {type(exc).__name__}: {exc}"[:300])
