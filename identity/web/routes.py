"""Every URL the hub serves, in one place."""

from __future__ import annotations

from aiohttp import web

from identity.api import docs, links, openapi, profile
from identity.api import export as export_api
from identity.api import rights as rights_api
from identity.api import sync as sync_api
from identity.oidc.actions import authorize, discovery, end_session, token, userinfo
from identity.pages import (
    account,
    email_change,
    linked_services,
    password,
    privacy,
    register,
    sign_in,
)
from identity.pages import rights as rights_pages
from identity.web.responses import redirect


async def home(request: web.Request) -> web.StreamResponse:
    return redirect("/account")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    r = app.router
    # OpenID Provider
    r.add_get("/.well-known/openid-configuration", discovery.openid_configuration)
    r.add_get("/jwks", discovery.jwks)
    r.add_get("/authorize", authorize.authorize)
    r.add_post("/authorize", authorize.authorize)
    r.add_post("/token", token.token)
    r.add_post("/revoke", token.revoke)
    r.add_post("/introspect", token.introspect)
    r.add_get("/userinfo", userinfo.userinfo)
    r.add_post("/userinfo", userinfo.userinfo)
    r.add_get("/end-session", end_session.end_session)
    r.add_post("/end-session", end_session.end_session)
    # JSON API for member services
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
    r.add_get("/schemas/", docs.schema_index)
    r.add_get("/schemas/{name}.json", docs.schema)
    r.add_get("/asyncapi.json", docs.asyncapi)
    r.add_get("/api/openapi.json", openapi.openapi)
    # Interactions of an authorization request
    r.add_get("/i/{uid}", sign_in.interaction_page)
    r.add_post("/i/{uid}/login", sign_in.interaction_login)
    r.add_post("/i/{uid}/consent", sign_in.interaction_consent)
    r.add_get("/i/{uid}/resume", authorize.resume)
    # Pages
    r.add_get("/", home)
    r.add_get("/healthz", health)
    r.add_get("/sign-in", sign_in.sign_in_page)
    r.add_post("/sign-in", sign_in.sign_in)
    r.add_post("/sign-out", sign_in.sign_out)
    r.add_get("/register", register.register_page)
    r.add_post("/register", register.register)
    r.add_get("/verify-email", register.verify_email_page)
    r.add_post("/verify-email", register.verify_email)
    r.add_post("/verify-email/resend", register.resend_verification)
    r.add_get("/guardian/confirm", register.guardian_page)
    r.add_post("/guardian/confirm", register.guardian_confirm)
    r.add_get("/reset-password", password.reset_page)
    r.add_post("/reset-password", password.reset_request)
    r.add_get("/reset-password/confirm", password.reset_confirm_page)
    r.add_post("/reset-password/confirm", password.reset_confirm)
    r.add_get("/account", account.account_page)
    r.add_post("/account/details", account.edit_details)
    r.add_get("/account/email/confirm", email_change.confirm_page)
    r.add_post("/account/email/confirm", email_change.confirm)
    r.add_post("/account/email/resend", email_change.resend)
    r.add_post("/account/email/cancel", email_change.cancel)
    r.add_get("/account/export", privacy.export_download)
    r.add_get("/account/delete", privacy.delete_page)
    r.add_post("/account/delete", privacy.delete)
    r.add_get("/account/guardian", privacy.guardian_page)
    r.add_post("/account/guardian", privacy.guardian_request)
    r.add_get("/account/unlink/{client_id}", linked_services.unlink_page)
    r.add_post("/account/unlink/{client_id}", linked_services.unlink)
    r.add_get("/account/cancel", linked_services.cancel_page)
    r.add_get("/account/password", password.change_page)
    r.add_post("/account/password", password.change)
    r.add_get("/account/rights", rights_pages.rights_page)
    r.add_post("/account/rights", rights_pages.open_from_page)
