"""The authorization endpoint (OIDC Core 3.1.2), as an ordered list of steps:

1. validate the request with authlib (client, exact redirect URI, response type, no request
   object, scope, S256 PKCE); errors go back to a trusted redirect URI, else to an error page;
2. decide whether the person must sign in (no session, ``prompt=login``, ``max_age``);
3. decide whether they must consent (nothing remembered covers the scopes, ``prompt=consent``);
4. with ``prompt=none``, answer ``login_required`` / ``consent_required`` instead of asking;
5. otherwise issue the code, link the service to the person (``accounts.link_lifecycle.link``)
   and record it in the session.

Steps 2 and 3 hand over to an *interaction* (``/i/{uid}``): a stored copy of the request
bound to this browser by a cookie scoped to that interaction's path.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import link_lifecycle
from identity.appkeys import DB, PROVIDER, SETTINGS
from identity.db.models import (
    Consent,
    Interaction,
    SessionService,
    utcnow,
)
from identity.db.upsert import ensure_row
from identity.oidc import scopes
from identity.oidc.adapter import HubOAuth2Request, read_request
from identity.oidc.client import ServiceClient
from identity.pages.common import render
from identity.tokens import digest, new_secret
from identity.web import browser
from identity.web.cookies import INTERACTION
from identity.web.responses import redirect

INTERACTION_COOKIE = INTERACTION.base


class Decision:
    """What the person decided in an interaction, if anything."""

    def __init__(self, *, fresh_since: dt.datetime | None = None, consented: bool = False, denied: bool = False) -> None:
        self.fresh_since = fresh_since
        self.consented = consented
        self.denied = denied


async def authorize(request: web.Request) -> web.StreamResponse:
    oauth_request = await read_request(request, request.config_dict[SETTINGS].issuer)
    async with request.config_dict[DB].begin() as db:
        signed_in = await browser.current(request, db)
        return await _authorize(request, db, oauth_request, signed_in, Decision())


async def resume(request: web.Request) -> web.StreamResponse:
    """Continue an authorization request after the person signed in or decided on consent."""
    uid = request.match_info["uid"]
    settings = request.config_dict[SETTINGS]
    async with request.config_dict[DB].begin() as db:
        interaction = await load_interaction(request, db, uid)
        if interaction is None:
            return expired_interaction(request)
        params = interaction.params
        oauth_request = HubOAuth2Request(
            "GET", settings.issuer + "/authorize", request.headers, query=[tuple(p) for p in params["query"]]
        )
        decision = Decision(
            fresh_since=interaction.created_at,
            consented=params.get("consented", False),
            denied=params.get("denied", False),
        )
        signed_in = await browser.current(request, db)
        response = await _authorize(request, db, oauth_request, signed_in, decision, interaction)
        if response.status == 302 and not response.headers["Location"].startswith(_interaction_path(uid)):
            await db.delete(interaction)
            INTERACTION.clear(request, response, path=_interaction_path(uid))
        return response


async def _authorize(
    request: web.Request,
    db: AsyncSession,
    oauth_request: HubOAuth2Request,
    signed_in: browser.SignedIn | None,
    decision: Decision,
    interaction: Interaction | None = None,
) -> web.StreamResponse:
    provider = request.config_dict[PROVIDER]
    account = signed_in.account if signed_in else None
    try:
        grant = await provider.run(db, lambda: provider.get_consent_grant(oauth_request, end_user=account))
    except OAuth2Error as error:
        return error_response(request, error, oauth_request)
    except ValueError:
        return error_page(request, "invalid_request", "The sign-in request is malformed.")

    redirect_uri = grant.redirect_uri
    client: ServiceClient = oauth_request.client
    data = oauth_request.payload.data
    prompts = set((data.get("prompt") or "").split())

    def fail(error: str, description: str) -> web.StreamResponse:
        return redirect_error(request, redirect_uri, error, description, data.get("state"))

    if data.get("response_mode", "query") != "query":
        return fail("invalid_request", "Only response_mode=query is supported.")
    if not scopes.split(oauth_request.scope):
        # Nothing the service may have was asked for: an empty grant needs no consent, so issuing
        # it would link the person to a service they never approved and reveal who they are.
        return fail("invalid_scope", "Ask for at least one scope the service is registered for.")

    if decision.denied:
        return fail("access_denied", "The person declined the request.")

    if needs_sign_in(signed_in, prompts, data.get("max_age"), decision):
        if "none" in prompts:
            return fail("login_required", "The person must sign in.")
        return await _interact(request, db, oauth_request, interaction)
    assert signed_in is not None and account is not None

    if not account.may_be_shared:
        return fail("access_denied", "The account is waiting for a guardian's consent.")

    if not account.email_verified and request.config_dict[SETTINGS].require_verified_email:
        # No service is linked to an address nobody has proved they own (no pre-account takeover).
        if "none" in prompts:
            return fail("interaction_required", "The person must confirm their email address first.")
        return render(
            request,
            "verify_first.html",
            {"email": account.email, "service": client.name, "retry": str(request.rel_url)},
            status=403,
        )

    if client.first_party:
        # The hub's own client (the support console): the person is using the hub itself, so
        # there is nothing to consent to, and no member service to link.
        oauth_request.hub = {"auth_time": signed_in.auth_time, "sid": signed_in.session.sid}
        return await provider.run(
            db, lambda: provider.create_authorization_response(oauth_request, grant_user=account, grant=grant)
        )
    requested = set(scopes.split(oauth_request.scope))
    consent = await db.scalar(
        select(Consent).where(Consent.account_id == account.id, Consent.service_id == client.id)
    )
    remembered = set(scopes.split(consent.scope)) if consent and consent.revoked_at is None else set()
    if not decision.consented and ("consent" in prompts or not requested <= remembered):
        if "none" in prompts:
            return fail("consent_required", "The person must approve this service.")
        return await _interact(request, db, oauth_request, interaction)

    now = utcnow()
    if decision.consented:
        # Two tabs may consent at once: create the row if missing, then widen it under a lock.
        await ensure_row(db, Consent, account_id=account.id, service_id=client.id, scope="", granted_at=now)
        consent = await db.scalar(
            select(Consent)
            .where(Consent.account_id == account.id, Consent.service_id == client.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        assert consent is not None
        kept = set(scopes.split(consent.scope)) if consent.revoked_at is None else set()
        consent.scope, consent.granted_at, consent.revoked_at = scopes.join(kept | requested), now, None

    await link_lifecycle.link(db, account_id=account.id, service_id=client.id, scope=oauth_request.scope, now=now)
    await _remember_service(db, signed_in.session.id, client.id)
    oauth_request.hub = {"auth_time": signed_in.auth_time, "sid": signed_in.session.sid}
    response = await provider.run(
        db, lambda: provider.create_authorization_response(oauth_request, grant_user=account, grant=grant)
    )
    return response


def needs_sign_in(
    signed_in: browser.SignedIn | None, prompts: set[str], max_age: str | None, decision: Decision
) -> bool:
    if signed_in is None:
        return True
    fresh = decision.fresh_since is not None and signed_in.auth_time >= decision.fresh_since
    if "login" in prompts and not fresh:
        return True
    if max_age is not None and re.fullmatch(r"[0-9]{1,10}", max_age):
        age = (utcnow() - signed_in.auth_time).total_seconds()
        if age > int(max_age) and not fresh:
            return True
    return False


async def _remember_service(db: AsyncSession, session_id: int, service_id: int) -> None:
    await ensure_row(db, SessionService, session_id=session_id, service_id=service_id)


def _interaction_path(uid: str) -> str:
    return f"/i/{uid}"


async def _interact(
    request: web.Request, db: AsyncSession, oauth_request: HubOAuth2Request, interaction: Interaction | None
) -> web.StreamResponse:
    if interaction is not None:
        uid = interaction.params["uid"]
        interaction.params = {**interaction.params, "consented": False}
        return redirect(_interaction_path(uid))
    settings = request.config_dict[SETTINGS]
    uid = new_secret(16)
    binding = new_secret()
    now = utcnow()
    db.add(
        Interaction(
            uid_hash=digest(uid),
            params={
                "uid": uid,
                "binding": digest(binding),
                # The request's parameters, whether it came as GET (query) or POST (form).
                "query": [list(p) for p in [*oauth_request.args.items(), *oauth_request.form.items()]],
                "client_id": oauth_request.client.client_id,
                "scope": oauth_request.scope,
            },
            created_at=now,
            expires_at=now + dt.timedelta(seconds=settings.interaction_ttl),
        )
    )
    response = redirect(_interaction_path(uid))
    INTERACTION.set(request, response, binding, path=_interaction_path(uid), max_age=settings.interaction_ttl)
    return response


async def load_interaction(request: web.Request, db: AsyncSession, uid: str) -> Interaction | None:
    """The interaction named by ``uid``, if it is live and bound to this browser."""
    if len(uid) > 64:
        return None
    row = await db.scalar(select(Interaction).where(Interaction.uid_hash == digest(uid)))
    binding = INTERACTION.read(request) or ""
    if row is None or row.expires_at <= utcnow() or not binding or digest(binding) != row.params.get("binding"):
        return None
    return row


def expired_interaction(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template(
        "message.html",
        request,
        {
            "title": "This sign-in has expired",
            "message": "The sign-in request is no longer valid in this browser. Go back to the service and start again.",
        },
        status=400,
    )


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
            "title": "This sign-in request cannot be completed",
            "message": "The service that sent you here made a request the hub cannot accept. "
            "Go back to the service and try again; if it keeps happening, tell the service.",
            "detail": f"{error}: {description}",
        },
        status=400,
    )
