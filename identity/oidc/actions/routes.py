"""The provider's URLs: its endpoints, and where a finished interaction resumes."""

from __future__ import annotations

from aiohttp import web

from identity.oidc.actions import authorize, discovery, end_session, par, token, userinfo


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/.well-known/openid-configuration", discovery.openid_configuration)
    r.add_get("/jwks", discovery.jwks)
    r.add_get("/authorize", authorize.authorize)
    r.add_post("/authorize", authorize.authorize)
    r.add_post("/token", token.token)
    r.add_post("/par", par.pushed_authorization_request)
    r.add_post("/revoke", token.revoke)
    r.add_post("/introspect", token.introspect)
    r.add_get("/userinfo", userinfo.userinfo)
    r.add_post("/userinfo", userinfo.userinfo)
    r.add_get("/end-session", end_session.end_session)
    r.add_post("/end-session", end_session.end_session)
    r.add_get("/i/{uid}/resume", authorize.resume)
