"""RP-Initiated Logout 1.0 (``/end-session``), plus back-channel notices to the session's services.

With a valid ``id_token_hint`` for the current session the person is signed out at once;
otherwise the hub asks first (a CSRF-protected form), so no third party can sign a person
out. Redirection happens only to a registered ``post_logout_redirect_uri``."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from authlib.oauth2 import OAuth2Error

from identity.i18n import _
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.db.units import unit
from identity.oidc.adapter import read_request
from identity.oidc.logout import end_session as end_browser_session
from identity.pages.common import render
from identity.web import after_commit, browser, csrf
from identity.web.responses import redirect


async def end_session(request: web.Request) -> web.StreamResponse:
    settings = request.config_dict[SETTINGS]
    provider = request.config_dict[PROVIDER]
    confirmed = False
    if request.method == "POST" and "confirm" in (await request.post()):
        await csrf.checked_form(request)
        confirmed = True
    oauth_request = await read_request(request, settings.issuer)
    async with unit(request.config_dict[DB]) as db:
        try:
            validated = await provider.run(db, lambda: provider.validate_endpoint_request("end_session", oauth_request))
        except OAuth2Error as error:
            return aiohttp_jinja2.render_template(
                "message.html",
                request,
                {
                    "title": _("Sign-out request not accepted"),
                    "message": _(
                        "The service asked to sign you out with a request the hub cannot verify. "
                        "You can sign out from your account page instead."
                    ),
                    "detail": f"{error.error}: {error.description}",
                },
                status=400,
            )
        signed_in = await browser.current(request, db)
        if signed_in is not None:
            claims = validated.id_token_claims or {}
            hinted = claims.get("sid") == signed_in.session.sid or claims.get("sub") == signed_in.account.sub
            if not (hinted or confirmed):
                fields = [(k, v) for k, v in oauth_request.payload.data.items() if k != csrf.FIELD]
                client = validated.client
                return render(request, "logout_confirm.html", {"fields": fields, "service": client.name if client else None})
            after_commit.logout(db, request, await end_browser_session(db, provider.keys, settings.issuer, signed_in.session))
    response: web.StreamResponse
    if validated.redirect_uri:
        response = redirect(validated.redirect_uri)
    else:
        response = aiohttp_jinja2.render_template(
            "message.html", request, {"title": _("You are signed out"), "message": _("You have signed out of the hub.")}
        )
    browser.clear_cookie(request, response)
    return response
