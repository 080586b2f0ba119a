"""The OpenAPI 3.1 document of the JSON API, ``GET /api/openapi.json``.

It is generated, not written: every ``/api/`` route's handler carries an
:func:`identity.api.spec.operation`, and the bodies' JSON Schemas come from the pydantic models
in ``schemas`` (draft 2020-12, which OpenAPI 3.1 uses as is)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from identity.api.spec import Operation, described
from identity.appkeys import SETTINGS
from identity.oidc.scopes import SUPPORTED_SCOPES
from schemas.api import Problem

REF = "#/components/schemas/{model}"
CACHE = {"Cache-Control": "public, max-age=300"}

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "The request is malformed (see error_description).",
    401: "No valid token: missing, expired, revoked, or of the wrong kind (see WWW-Authenticate).",
    403: "The token lacks a scope this needs (see the scope member).",
    404: "Not found, or not linked to the calling service: the two cannot be told apart.",
    409: "The request conflicts with the resource's current state.",
    412: "If-Match does not match the current version.",
    408: "The body did not arrive within the time limit (ONESIGNIN_REQUEST_BODY_TIMEOUT).",
    413: "The body is too large.",
    415: "The body must be JSON (Content-Type: application/json); multipart bodies are refused.",
    422: "The body is JSON but not valid; problems lists each field.",
    429: "Not now: try again after the number of seconds in Retry-After.",
}


def api_operations(app: web.Application) -> list[tuple[str, str, Operation | None]]:
    """Every ``/api/`` route as (method, path template, its description or None)."""
    found = []
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or ""
        if not path.startswith("/api/"):
            continue
        for route in resource:
            if route.method in ("HEAD", "OPTIONS", "*"):
                continue
            found.append((route.method, path, described(route.handler)))
    return found


def document(app: web.Application, issuer: str) -> dict[str, Any]:
    operations = [(m, p, op) for m, p, op in api_operations(app) if op is not None]
    bodies = {op.body for _, _, op in operations if op.body is not None}
    answers = {model for _, _, op in operations for model in op.responses.values() if model is not None} | {Problem}
    pairs: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)]
    pairs += [(m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)]
    refs, definitions = models_json_schema(pairs, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in operations:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op, refs)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "OneSignIn API",
            "version": "1.0.0",
            "description": (
                "The hub's JSON API for member services and for the people who sign in. A service calls it with "
                "either the access token a person granted it (authorization code flow with PKCE) or its own "
                "client-credentials token. Errors are JSON objects with `error` and `error_description` "
                "(RFC 6749 style codes); a service never learns whether a person it is not linked to exists."
            ),
        },
        "servers": [{"url": issuer}],
        "tags": [
            {"name": "profile", "description": "The person's basic account details."},
            {
                "name": "sync",
                "description": "Profile sync to the calling service, on its channels: its webhook and its Kafka topic "
                "(the events of /asyncapi.json), and its SCIM 2.0 server, whose Users the hub makes, patches, "
                "deactivates and deletes (RFC 7644). The status below covers all three.",
            },
            {"name": "links", "description": "Linked accounts, owned by each service."},
            {"name": "rights", "description": "Data-subject rights requests, routed to the right controller."},
            {"name": "privacy", "description": "The hub's own duties as a controller."},
            {
                "name": "ssf",
                "description": "Shared Signals (OpenID SSF 1.0): the calling service's stream of CAEP and RISC events "
                "(Security Event Tokens) about the people linked to it, pushed (RFC 8935) or polled (RFC 8936). "
                "The transmitter's metadata is at /.well-known/ssf-configuration.",
            },
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "person": {
                    "type": "oauth2",
                    "description": "An access token a person granted to the calling service: `Authorization: Bearer <token>`, "
                    "or, for a DPoP-bound token (RFC 9449), `Authorization: DPoP <token>` with a `DPoP` proof header.",
                    "flows": {
                        "authorizationCode": {
                            "authorizationUrl": f"{issuer}/authorize",
                            "tokenUrl": f"{issuer}/token",
                            "scopes": {s: f"The {s} scope." for s in SUPPORTED_SCOPES},
                        }
                    },
                },
                "service": {
                    "type": "oauth2",
                    "description": "The calling service's own token (client_credentials grant), as Bearer or, when DPoP-bound, "
                    "with the DPoP scheme and a proof.",
                    "flows": {"clientCredentials": {"tokenUrl": f"{issuer}/token", "scopes": {}}},
                },
            },
        },
    }


def _operation(method: str, path: str, op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    out: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        out["description"] = op.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
        for name in _path_parameters(path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": required, "description": text, "schema": {"type": "string"}}
        for name, (text, required) in op.query.items()
    ]
    parameters += [
        {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in op.request_headers.items()
    ]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(op.body, "validation")}}}
    statuses = dict(op.responses)
    if op.auth != "none":
        statuses.setdefault(401, None)
        out["security"] = [{op.auth: list(op.scopes)}]
    if op.auth == "person":
        # A person's token without a scope the operation needs (``openid`` at least): insufficient_scope.
        statuses.setdefault(403, None)
    if op.body is not None:
        for status in (400, 422):
            statuses.setdefault(status, None)
    if method in ("POST", "PATCH", "PUT"):
        # Every body is read whole, within a time limit, before the handler runs.
        for status in (408, 413, 415):
            statuses.setdefault(status, None)
    responses: dict[str, Any] = {}
    for status, model in sorted(statuses.items()):
        answer: dict[str, Any] = {"description": _REASONS.get(status, "")}
        if status in op.media:
            answer["content"] = {op.media[status]: {"schema": ref(model, "serialization") if model else {}}}
        elif model is not None:
            answer["content"] = {"application/json": {"schema": ref(model, "serialization")}}
        elif status >= 400:
            answer["content"] = {"application/json": {"schema": ref(Problem, "serialization")}}
        headers = {name: {"description": text, "schema": {"type": "string"}} for name, text in op.headers.get(status, {}).items()}
        if status == 401 or (status == 403 and op.auth == "person"):
            headers["WWW-Authenticate"] = {"description": "The Bearer challenge (RFC 6750).", "schema": {"type": "string"}}
        if headers:
            answer["headers"] = headers
        responses[str(status)] = answer
    out["responses"] = responses
    return out


def _path_parameters(path: str) -> list[str]:
    names = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            names.append(part[1:-1].split(":", 1)[0])
    return names


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}").replace("-", "_") for w in path.removeprefix("/api/v1/").split("/") if w]
    return method.lower() + "_" + "_".join(words)


async def openapi(request: web.Request) -> web.Response:
    settings = request.config_dict[SETTINGS]
    return web.json_response(document(request.app, settings.issuer), headers=CACHE)
