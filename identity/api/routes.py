"""The JSON API's URLs for member services, and the documents describing them."""

from __future__ import annotations

from aiohttp import web

from identity.api import docs, links, openapi, profile
from identity.api import export as export_api
from identity.api import ssf as ssf_api
from identity.api import rights as rights_api
from identity.api import sync as sync_api


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/me", profile.get_me)
    r.add_patch("/api/v1/me", profile.patch_me)
    r.add_get("/api/v1/me/export", export_api.get_export)
    r.add_get("/api/v1/sync/status", sync_api.sync_status)
    r.add_post("/api/v1/sync/resync", sync_api.resync)
    r.add_get("/api/v1/links/{sub}", links.get_link)
    r.add_post("/api/v1/links/{sub}/cancel", links.cancel_link)
    r.add_get("/api/v1/me/rights-requests", rights_api.list_mine)
    r.add_post("/api/v1/me/rights-requests", rights_api.open_mine)
    r.add_get("/api/v1/me/rights-requests/{id}", rights_api.get_mine)
    r.add_get("/api/v1/rights-requests", rights_api.list_for_service)
    r.add_post("/api/v1/rights-requests/{id}/status", rights_api.change_status)
    r.add_get("/.well-known/ssf-configuration", ssf_api.configuration)
    r.add_post("/api/v1/ssf/stream", ssf_api.create_stream)
    r.add_get("/api/v1/ssf/stream", ssf_api.read_stream)
    r.add_patch("/api/v1/ssf/stream", ssf_api.update_stream)
    r.add_put("/api/v1/ssf/stream", ssf_api.replace_stream)
    r.add_delete("/api/v1/ssf/stream", ssf_api.delete_stream)
    r.add_get("/api/v1/ssf/status", ssf_api.get_status)
    r.add_post("/api/v1/ssf/status", ssf_api.set_status)
    r.add_post("/api/v1/ssf/verify", ssf_api.verify)
    r.add_post("/api/v1/ssf/poll/{id}", ssf_api.poll_sets)
    r.add_get("/schemas/", docs.schema_index)
    r.add_get("/schemas/{name}.json", docs.schema)
    r.add_get("/asyncapi.json", docs.asyncapi)
    r.add_get("/api/openapi.json", openapi.openapi)
