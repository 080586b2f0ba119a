"""Signing in and out: the hub's own sign-in page, and the sign-in and consent steps of an
authorization request (``/i/{uid}``)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import throttle
from identity.accounts.store import find_by_email
from identity.db.models import Account, Service, SignInEvent, utcnow
from identity.oidc import scopes
from identity.oidc.actions.authorize import Decision, needs_sign_in, expired_interaction, load_interaction
from identity.oidc.logout import end_session, send_notices
from identity.pages.common import client_address, field, hash_password, render, verify_password
from identity.web import browser, csrf
from identity.web.appkeys import DB, HASHER, HTTP, PROVIDER, SETTINGS
from identity.web.responses import redirect, safe_next
from schemas.account import normalize_email

WRONG = "The email address or password is incorrect."


class SignInRefused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def attempt(request: web.Request, db: AsyncSession, email: str, password: str) -> Account:
    """Check the credentials under throttling; raise SignInRefused with a message for people."""
    settings = request.config_dict[SETTINGS]
    keys = throttle.Keys.of(email, client_address(request))
    wait = await throttle.retry_after(db, keys)
    if wait is not None:
        raise SignInRefused(f"Too many failed attempts. Try again in {wait} seconds.", 429)
    try:
        account = await find_by_email(db, normalize_email(email))
    except ValueError:
        account = None
    ok = await verify_password(request, account.password_hash if account else None, password)
    if not ok or account is None:
        await throttle.record_failure(db, keys, settings)
        if account is not None:
            db.add(SignInEvent(account_id=account.id, address=client_address(request), succeeded=False))
        wait = await throttle.retry_after(db, keys)
        if wait is not None:
            raise SignInRefused(f"{WRONG} Too many failed attempts: try again in {wait} seconds.", 429)
        raise SignInRefused(WRONG, 400)
    await throttle.record_success(db, keys)
    if request.config_dict[HASHER].needs_rehash(account.password_hash):
        account.password_hash = await hash_password(request, password)
    db.add(SignInEvent(account_id=account.id, address=client_address(request), succeeded=True, at=utcnow()))
    return account


async def sign_in_page(request: web.Request) -> web.Response:
    return render(request, "sign_in.html", {"next": safe_next(request.query.get("next")), "action": "/sign-in"})


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await csrf.checked_form(request)
    email, password = field(form, "email", 320), field(form, "password", 1024)
    target = safe_next(field(form, "next"))
    async with request.config_dict[DB].begin() as db:
        try:
            account = await attempt(request, db, email, password)
        except SignInRefused as refused:
            context = {"next": target, "action": "/sign-in", "email": email, "error": refused.message}
            return render(request, "sign_in.html", context, status=refused.status)
        _, secret = await browser.start(db, request, account)
    response = redirect(target, 303)
    browser.set_cookie(request, response, secret)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await csrf.checked_form(request)
    settings = request.config_dict[SETTINGS]
    notices = []
    async with request.config_dict[DB].begin() as db:
        signed_in = await browser.current(request, db)
        if signed_in is not None:
            notices = await end_session(db, request.config_dict[PROVIDER].keys, settings.issuer, signed_in.session)
    if notices:
        await send_notices(request.config_dict[HTTP], notices, settings.backchannel_logout_timeout)
    response = render(request, "message.html", {"title": "You are signed out", "message": "You have signed out of the hub."})
    browser.clear_cookie(response)
    return response


async def _service_name(db: AsyncSession, client_id: str) -> str:
    name = await db.scalar(select(Service.name).where(Service.client_id == client_id))
    return name or client_id


async def interaction_page(request: web.Request) -> web.StreamResponse:
    uid = request.match_info["uid"]
    async with request.config_dict[DB].begin() as db:
        interaction = await load_interaction(request, db, uid)
        if interaction is None:
            return expired_interaction(request)
        signed_in = await browser.current(request, db)
        service = await _service_name(db, interaction.params["client_id"])
        query = dict(interaction.params["query"])
        prompts = set(query.get("prompt", "").split())
        if needs_sign_in(signed_in, prompts, query.get("max_age"), Decision(fresh_since=interaction.created_at)):
            return render(
                request,
                "sign_in.html",
                {"action": f"/i/{uid}/login", "service": service, "register_next": f"/i/{uid}"},
            )
        assert signed_in is not None
        requested = scopes.split(interaction.params["scope"])
        return render(
            request,
            "consent.html",
            {
                "uid": uid,
                "service": service,
                "email": signed_in.account.email,
                "scopes": [(s, scopes.SCOPE_DESCRIPTIONS.get(s, s)) for s in requested],
            },
        )


async def interaction_login(request: web.Request) -> web.StreamResponse:
    uid = request.match_info["uid"]
    form = await csrf.checked_form(request)
    email, password = field(form, "email", 320), field(form, "password", 1024)
    async with request.config_dict[DB].begin() as db:
        interaction = await load_interaction(request, db, uid)
        if interaction is None:
            return expired_interaction(request)
        try:
            account = await attempt(request, db, email, password)
        except SignInRefused as refused:
            service = await _service_name(db, interaction.params["client_id"])
            context = {"action": f"/i/{uid}/login", "service": service, "email": email, "error": refused.message, "register_next": f"/i/{uid}"}
            return render(request, "sign_in.html", context, status=refused.status)
        previous = await browser.current(request, db)
        if previous is not None and previous.account.id != account.id:
            previous.session.ended_at = utcnow()
        _, secret = await browser.start(db, request, account)
    response = redirect(f"/i/{uid}/resume", 303)
    browser.set_cookie(request, response, secret)
    return response


async def interaction_consent(request: web.Request) -> web.StreamResponse:
    uid = request.match_info["uid"]
    form = await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        interaction = await load_interaction(request, db, uid)
        if interaction is None:
            return expired_interaction(request)
        if await browser.current(request, db) is None:
            return redirect(f"/i/{uid}", 303)
        allowed = form.get("decision") == "allow"
        interaction.params = {**interaction.params, "consented": allowed, "denied": not allowed}
    return redirect(f"/i/{uid}/resume", 303)
