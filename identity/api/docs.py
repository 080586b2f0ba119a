"""Machine-readable documentation for member-service developers: a JSON Schema for every event
(and for the person's export, ``account.export``) under ``/schemas/`` and the AsyncAPI 3
document of profile sync at ``/asyncapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web

from identity.appkeys import SETTINGS
from schemas.asyncapi import document
from schemas.events import json_schemas
from schemas.export import AccountExport

CACHE = {"Cache-Control": "public, max-age=3600"}


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    # The events, and the person's export (GET /account/export, GET /api/v1/me/export).
    return json_schemas() | {"account.export": AccountExport.model_json_schema(mode="serialization")}


async def schema_index(request: web.Request) -> web.Response:
    base = request.config_dict[SETTINGS].issuer
    return web.json_response({name: f"{base}/schemas/{name}.json" for name in _schemas()}, headers=CACHE)


async def schema(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = _schemas().get(name)
    if found is None:
        raise web.HTTPNotFound()
    body = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{request.config_dict[SETTINGS].issuer}/schemas/{name}.json", **found}
    return web.json_response(body, headers=CACHE)


async def asyncapi(request: web.Request) -> web.Response:
    settings = request.config_dict[SETTINGS]
    body = document(
        issuer=settings.issuer, topic_prefix=settings.kafka_topic_prefix, webhook_timeout=settings.webhook_timeout
    )
    return web.json_response(body, headers=CACHE)
