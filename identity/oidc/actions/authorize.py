"""The authorization endpoint (OIDC Core 3.1.2), as an ordered list of steps:

1. take the request's parameters from a pushed request (RFC 9126) or a signed request object
   (RFC 9101: ``identity.oidc.request_objects``) when it names one, then validate it with
   authlib (client, exact redirect URI, response type, no unsigned request object, scope, S256
   PKCE); errors go back to a trusted redirect URI, else to an error page;
2. decide whether the person must sign in (no session, ``prompt=login``, ``max_age``);
3. decide whether they must consent (nothing remembered covers the scopes, ``prompt=consent``,
   or a public client whose redirect URI cannot prove who it is: RFC 8252 section 8.6);
4. with ``prompt=none``, answer ``login_required`` / ``consent_required`` instead of asking;
5. otherwise record the consent (``oidc.consents``), issue the code, link the service to the
   person (``accounts.link_lifecycle.link``) and record it in the session.

Steps 2 and 3 hand over to an *interaction* (``/i/{uid}``, ``identity.oidc.interactions``): a
stored copy of the request bound to this browser by a cookie scoped to that interaction's path.
The request resumes from it once the person acted; it ends once the request is answered with a
redirect to the service (a code or an error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from sqlalchemy.ext.asyncio import AsyncSession

from identity.i18n import _
from identity.accounts import link_lifecycle
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.db.models import (
    Interaction,
    SessionService,
    utcnow,
)
from identity.db.upsert import ensure_row
from identity.oidc import assurance, consents, interactions, pushed, request_objects, scopes
from identity.oidc.actions.token import request_object_keys_ready
from identity.oidc.adapter import HubOAuth2Request, read_request
from identity.oidc.client import ServiceClient
from identity.pages.common import render
from identity.web import browser
from identity.web.cookies import INTERACTION
from identity.web.responses import expired_interaction, redirect

INTERACTION_COOKIE = INTERACTION.base


@dataclass(frozen=True)
class Answer:
    """The endpoint's answer, and whether it answers the request (a redirect to the service with
    a code or an error) rather than asking the person or showing a page."""

    response: web.StreamResponse
    final: bool = False


async def authorize(request: web.Request) -> web.StreamResponse:
    issuer = request.config_dict[SETTINGS].issuer
    oauth_request = await read_request(request, issuer)
    data = oauth_request.payload.data
    if "request" in data and data.get("client_id") and request_objects.is_signed(data["request"]):
        # Before the unit of work: the keys may have to be read or fetched first.
        await request_object_keys_ready(request, data["client_id"], data["request"])
    async with request.config_dict[DB].begin() as db:
        if pushed.is_pushed(data.get("request_uri")):
            # RFC 9126 section 4: the pushed request's parameters, and nothing sent beside them.
            params = await pushed.take(db, data["request_uri"], data.get("client_id"))
            if params is None:
                return error_page(request, "invalid_request_uri", "The pushed request is unknown, expired or already used.")
            oauth_request = HubOAuth2Request("GET", issuer, "/authorize", request.headers, query=params)
        else:
            # (A pushed request of a service that must sign its requests was checked when pushed.)
            client = await _client(request, db, data.get("client_id"))
            if client is not None and client.require_par:
                return error_page(request, "invalid_request", "This service must push its authorization requests (PAR).")
            if "request" in data and request_objects.is_signed(data["request"]):
                # RFC 9101 section 6.3: the signed object's parameters, and nothing sent beside them.
                opened = await _open_request_object(request, db, data.get("client_id"), data["request"])
                if isinstance(opened, web.StreamResponse):
                    return opened
                oauth_request = HubOAuth2Request("GET", issuer, "/authorize", request.headers, query=opened)
            elif client is not None and client.require_signed_request_object:
                return error_page(request, "invalid_request", "This service must send its requests as signed request objects.")
        signed_in = await browser.current(request, db)
        return (await _authorize(request, db, oauth_request, signed_in, interactions.Decision())).response


async def _open_request_object(
    request: web.Request, db: AsyncSession, client_id: str | None, request_object: str
) -> list[tuple[str, str]] | web.StreamResponse:
    """The parameters inside a signed request object, or the error page that refuses it (its
    redirect URI cannot be trusted before the object is verified)."""
    if not client_id:
        return error_page(request, "invalid_request", "Send client_id beside the request object.")
    provider = request.config_dict[PROVIDER]
    issuer = request.config_dict[SETTINGS].issuer

    def open_object() -> list[tuple[str, str]]:
        client = provider.query_client(client_id)
        if client is None:
            raise request_objects.InvalidRequestObject("The service is unknown.")
        return request_objects.verify(request_object, client, provider.client_keys.keys_for(client), issuer)

    try:
        params = await provider.run(db, open_object)
    except OAuth2Error as error:
        return error_page(request, error.error, error.description or "")
    return [("client_id", client_id), *((k, v) for k, v in params if k != "client_id")]


async def _client(request: web.Request, db: AsyncSession, client_id: str | None) -> ServiceClient | None:
    if not client_id:
        return None
    provider = request.config_dict[PROVIDER]
    return await provider.run(db, lambda: provider.query_client(client_id))


async def resume(request: web.Request) -> web.StreamResponse:
    """Continue an authorization request after the person signed in or decided on consent."""
    uid = request.match_info["uid"]
    settings = request.config_dict[SETTINGS]
    async with request.config_dict[DB].begin() as db:
        interaction = await interactions.find(db, uid, INTERACTION.read(request))
        if interaction is None:
            return expired_interaction(request)
        oauth_request = HubOAuth2Request("GET", settings.issuer, "/authorize", request.headers, query=interactions.query(interaction))
        signed_in = await browser.current(request, db)
        answer = await _authorize(request, db, oauth_request, signed_in, interactions.decision(interaction), interaction)
        if answer.final:
            await interactions.finish(db, interaction)
            INTERACTION.clear(request, answer.response, path=interactions.path(uid))
        return answer.response


async def _authorize(
    request: web.Request,
    db: AsyncSession,
    oauth_request: HubOAuth2Request,
    signed_in: browser.SignedIn | None,
    decision: interactions.Decision,
    interaction: Interaction | None = None,
) -> Answer:
    provider = request.config_dict[PROVIDER]
    account = signed_in.account if signed_in else None
    try:
        grant = await provider.run(db, lambda: provider.get_consent_grant(oauth_request, end_user=account))
    except OAuth2Error as error:
        # Final when it goes back to a redirect URI validated for the client.
        return Answer(error_response(request, error, oauth_request), final=bool(error.redirect_uri))
    except ValueError:
        return Answer(error_page(request, "invalid_request", "The sign-in request is malformed."))

    redirect_uri = grant.redirect_uri
    client: ServiceClient = oauth_request.client
    data = oauth_request.payload.data
    prompts = set((data.get("prompt") or "").split())

    def fail(error: str, description: str) -> Answer:
        return Answer(redirect_error(request, redirect_uri, error, description, data.get("state")), final=True)

    if client.disabled:
        return fail("unauthorized_client", "This service is disabled at the hub: it cannot sign people in.")
    if data.get("response_mode", "query") != "query":
        return fail("invalid_request", "Only response_mode=query is supported.")
    if not scopes.split(oauth_request.scope):
        # Nothing the service may have was asked for: an empty grant needs no consent, so issuing
        # it would link the person to a service they never approved and reveal who they are.
        return fail("invalid_scope", "Ask for at least one scope the service is registered for.")

    if decision.denied:
        return fail("access_denied", "The person declined the request.")

    if interactions.needs_sign_in(signed_in.auth_time if signed_in else None, prompts, data.get("max_age"), decision):
        if "none" in prompts:
            return fail("login_required", "The person must sign in.")
        return await _interact(request, db, oauth_request, interaction)
    assert signed_in is not None and account is not None

    if not account.may_be_shared:
        return fail("access_denied", "The account is waiting for a guardian's consent.")

    if assurance.needs_second_factor(data.get("acr_values"), signed_in.session.amr):
        # Step-up: the interaction page asks for the code (or says how to set one up).
        if "none" in prompts:
            return fail("interaction_required", "The service asks for two-step sign-in.")
        return await _interact(request, db, oauth_request, interaction)

    if not account.email_verified and request.config_dict[SETTINGS].require_verified_email:
        # No service is linked to an address nobody has proved they own (no pre-account takeover).
        if "none" in prompts:
            return fail("interaction_required", "The person must confirm their email address first.")
        return Answer(
            render(
                request,
                "verify_first.html",
                {"email": account.email, "service": client.name, "retry": str(request.rel_url)},
                status=403,
            )
        )

    if client.first_party:
        # The hub's own client (the support console): the person is using the hub itself, so
        # there is nothing to consent to, and no member service to link.
        oauth_request.hub = {"auth_time": signed_in.auth_time, "sid": signed_in.session.sid, "amr": signed_in.session.amr}
        return _answered(
            await provider.run(db, lambda: provider.create_authorization_response(oauth_request, grant_user=account, grant=grant))
        )
    requested = set(scopes.split(oauth_request.scope))
    remembered = await consents.remembered(db, account.id, client.id)
    # RFC 8252 section 8.6: any app on the device can use a public client's client_id with a
    # loopback or private-use redirect URI, so such a request is never granted without the person.
    unassured = client.public and not redirect_uri.startswith("https://")
    if not decision.consented and (unassured or "consent" in prompts or not requested <= remembered):
        if "none" in prompts:
            return fail("consent_required", "The person must approve this service.")
        return await _interact(request, db, oauth_request, interaction)

    now = utcnow()
    if decision.consented:
        await consents.grant(db, account.id, client.id, requested, now)

    await link_lifecycle.link(db, account_id=account.id, service_id=client.id, scope=oauth_request.scope, now=now)
    await _remember_service(db, signed_in.session.id, client.id)
    oauth_request.hub = {"auth_time": signed_in.auth_time, "sid": signed_in.session.sid, "amr": signed_in.session.amr}
    response = await provider.run(
        db, lambda: provider.create_authorization_response(oauth_request, grant_user=account, grant=grant)
    )
    return _answered(response)


def _answered(response: web.StreamResponse) -> Answer:
    """authlib's answer to a request it completed: final when it redirects to the service."""
    return Answer(response, final=response.status == 302)


async def _remember_service(db: AsyncSession, session_id: int, service_id: int) -> None:
    await ensure_row(db, SessionService, session_id=session_id, service_id=service_id)


async def _interact(
    request: web.Request, db: AsyncSession, oauth_request: HubOAuth2Request, interaction: Interaction | None
) -> Answer:
    """Hand over to the person: to the interaction already under way, or to a new one."""
    if interaction is not None:
        return Answer(redirect(interactions.path(interactions.ask_again(interaction))))
    settings = request.config_dict[SETTINGS]
    uid, binding = interactions.start(
        db,
        # The request's parameters, whether it came as GET (query) or POST (form).
        query=[list(p) for p in [*oauth_request.args.items(), *oauth_request.form.items()]],
        client_id=oauth_request.client.client_id,
        scope=oauth_request.scope,
        ttl=settings.interaction_ttl,
    )
    response = redirect(interactions.path(uid))
    INTERACTION.set(request, response, binding, path=interactions.path(uid), max_age=settings.interaction_ttl)
    return Answer(response)


def redirect_error(
    request: web.Request, redirect_uri: str, error: str, description: str, state: str | None
) -> web.StreamResponse:
    params: list[tuple[str, Any]] = [("error", error), ("error_description", description)]
    if state:
        params.append(("state", state))
    params.append(("iss", request.config_dict[SETTINGS].issuer))
    return redirect(add_params_to_uri(redirect_uri, params))


def error_response(request: web.Request, error: OAuth2Error, oauth_request: HubOAuth2Request) -> web.StreamResponse:
    """RFC 6749 4.1.2.1: redirect only to a redirect URI validated for the client."""
    if error.redirect_uri:
        return redirect_error(
            request, error.redirect_uri, error.error, error.description or "", oauth_request.payload.data.get("state")
        )
    return error_page(request, error.error, error.description or "")


def error_page(request: web.Request, error: str, description: str) -> web.StreamResponse:
    return aiohttp_jinja2.render_template(
        "message.html",
        request,
        {
            "title": _("This sign-in request cannot be completed"),
            "message": _(
                "The service that sent you here made a request the hub cannot accept. "
                "Go back to the service and try again; if it keeps happening, tell the service."
            ),
            "detail": f"{error}: {description}",
        },
        status=400,
    )
