"""The requests of :mod:`sync.scim`: ``scim2-client`` over an :mod:`identity.outbound` session,
its answers read with ``scim2-models``. Imported when a SCIM server is first called."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from scim2_client import BaseAsyncSCIMClient, SCIMClientException
from scim2_client.client import describe_resource_models
from scim2_models import PatchOp, PatchOperation, ScimProvider, SearchRequest, User
from scim2_models.exceptions import SCIMException

from identity import outbound
from sync.scim import MAX_ANSWER_BYTES, nested
from sync.webhooks import UNANSWERED, Outcome, parse_retry_after, unanswered

_models, _types = describe_resource_models([User])
PROVIDER = ScimProvider(models=_models, resource_types=_types)


class _Answer:
    """An answer as scim2-client reads it (``status_code``, ``headers``, ``text``)."""

    def __init__(self, fetched: outbound.Fetched) -> None:
        self.status_code = fetched.status
        self.headers = fetched.headers or {}
        self.text = fetched.body.decode("utf-8", "replace")


class _Refused(Exception):
    """The server answered with a failure the outcome policy retries (429, 5xx, 401, ...)."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class _Missing(Exception):
    """The server has no resource at that address (404)."""


class OutboundSCIMClient(BaseAsyncSCIMClient):
    """scim2-client over an :mod:`identity.outbound` session: requests only under the service's
    base URL, with its bearer token; failures the policy retries are raised as they come."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str, *, timeout: aiohttp.ClientTimeout) -> None:
        super().__init__(provider=PROVIDER, check_response_content_type=False)
        self.http = http
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def _stays_under_base_url(self, endpoint: str) -> bool:
        parts = urlsplit(endpoint)
        return not parts.scheme and not parts.netloc

    def _parse_json(self, response: Any) -> Any:
        return json.loads(response.text)

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/scim+json, application/json",
            "Content-Type": "application/scim+json",
        } | dict(kwargs.get("headers") or {})
        params = {k: str(v) for k, v in (kwargs.get("params") or {}).items()}
        fetched = await outbound.call(
            self.http, method, self.base_url + url, timeout=self.timeout, limit=MAX_ANSWER_BYTES,
            json_body=kwargs.get("json"), params=params or None, headers=headers,
        )
        if fetched.status == 404:
            raise _Missing()
        if fetched.status == 429 or fetched.status >= 500 or fetched.status in (401, 403, 408):
            header = fetched.headers.get("Retry-After") if fetched.headers is not None else None
            raise _Refused(fetched.status, parse_retry_after(header) if fetched.status in (429, 503) else None)
        return _Answer(fetched)


async def _find(client: OutboundSCIMClient, external_id: str) -> str | None:
    """The id of the User whose ``externalId`` is ``external_id``, if the server has one."""
    quoted = external_id.replace("\\", "\\\\").replace('"', '\\"')
    found = await client.query(User, query_parameters=SearchRequest(filter=f'externalId eq "{quoted}"', count=2))
    resources = getattr(found, "resources", None) or []
    return resources[0].id if resources else None


async def _patch(client: OutboundSCIMClient, scim_id: str, replace: dict[str, Any], clear: list[str]) -> None:
    operations = [PatchOperation[User](op="replace", path=path, value=value) for path, value in replace.items()]
    operations += [PatchOperation[User](op="remove", path=path) for path in clear]
    await client.modify(User, scim_id, PatchOp[User](operations=operations))


async def _put(client: OutboundSCIMClient, intent: dict[str, Any]) -> str:
    user, clear = intent["user"], intent["clear"]
    scim_id = intent.get("id")
    if scim_id:
        try:
            await _patch(client, scim_id, user, clear)
            return str(scim_id)
        except _Missing:
            pass  # removed at the service: looked for by externalId, else made again
    scim_id = await _find(client, intent["externalId"])
    if scim_id is not None:
        await _patch(client, scim_id, user, clear)
        return scim_id
    created = await client.create(User.model_validate(nested(user) | {"active": True}))
    if not getattr(created, "id", None):
        raise SCIMClientException("the SCIM server made a User without an id")
    return str(created.id)


async def _deactivate(client: OutboundSCIMClient, intent: dict[str, Any]) -> None:
    scim_id = await _find(client, intent["externalId"])
    if scim_id is None:
        return  # never provisioned there, or already removed: nothing to deactivate
    try:
        await _patch(client, scim_id, {"active": False}, [])
    except _Missing:
        pass


async def _delete(client: OutboundSCIMClient, intent: dict[str, Any]) -> None:
    scim_id = await _find(client, intent["externalId"])
    if scim_id is None:
        return
    try:
        await client.delete(User, scim_id)
    except _Missing:
        pass


async def send(http: aiohttp.ClientSession, base_url: str, token: str, body: str, *, timeout: aiohttp.ClientTimeout) -> Outcome:
    """Carry out one intent (a job's ``body``) at the service's SCIM server; what it came to.
    A ``put`` that succeeded says the User's SCIM ``id`` (``Outcome.resource_id``)."""
    intent = json.loads(body)
    client = OutboundSCIMClient(http, base_url, token, timeout=timeout)
    resource_id = None
    try:
        if intent["op"] == "put":
            resource_id = await _put(client, intent)
        elif intent["op"] == "deactivate":
            await _deactivate(client, intent)
        else:
            await _delete(client, intent)
    except _Refused as exc:
        return Outcome("retry", f"SCIM server: HTTP {exc.status}", status=exc.status, retry_after=exc.retry_after)
    except _Missing:
        return Outcome("retry", "SCIM server: HTTP 404 for /Users")
    except UNANSWERED as exc:
        return unanswered(exc, timeout, whose="the SCIM server's", prefix="SCIM server: ")
    except SCIMException as exc:
        # An Error the server sent (409 uniqueness, 400 invalid value, ...): its own words.
        status = getattr(exc, "status", None)
        return Outcome("retry", f"SCIM server: HTTP {status}: {exc}"[:300], status=status)
    except (SCIMClientException, ValueError) as exc:
        return Outcome("retry", f"SCIM server: {type(exc).__name__}: {exc}"[:300])
    return Outcome("ok", status=200, resource_id=resource_id)
