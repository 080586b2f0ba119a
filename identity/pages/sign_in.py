"""Signing in and out: the hub's own sign-in page, and the sign-in and consent steps of an
authorization request (``/i/{uid}``). The throttled password check is
``identity.accounts.sign_in``'s; this module reads what it needs from the request (the client
address, the known-browser cookie) and starts the browser's session."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import devices, new_browser, passkeys, second_factor, throttle
from identity.accounts.sign_in import (
    Attempt,
    SignInRefused,
    begin_attempt,
    check_password,
    finish_attempt,
    settle,
    sign_in_at_once,
    wrong,
)
from identity.appkeys import CIPHER, DB, HASHER, HASHING, HUB_METRICS, PROVIDER, SECRET, SETTINGS
from identity.db import dialect
from identity.db.engine import autocommit
from identity.db.models import Service
from identity.db.units import unit
from identity.i18n import _
from identity.oidc import assurance, interactions, scopes
from identity.oidc.logout import end_session
from identity.pages import passkey_offers
from identity.pages.common import client_address, field, render
from identity.web import after_commit, browser, csrf
from identity.web.cookies import DEVICE, INTERACTION, SECOND_FACTOR
from identity.web.responses import expired_interaction, redirect, safe_next

#: How long a browser is remembered for the accounts signed in with it.
DEVICE_COOKIE_DAYS = 365


@dataclass
class SignedIn:
    """A successful sign-in: the new session's cookie secret, and the browser's device cookie
    when it changed (``identity.accounts.devices``)."""

    secret: str
    device_cookie: str | None
    #: The account, when this browser never signed in to it before (the person is told).
    new_browser_of: int | None = None


@dataclass
class SecondFactorDue:
    """The password was right and the account has a second factor: no session yet. The sealed
    cookie value that names the account until the code is given (``identity.pages.two_step``)."""

    pending: str


def attempt_keys(request: web.Request, email: str) -> throttle.Keys:
    address = client_address(request)
    account_key = throttle.email_key("account", email)
    device = devices.recognised(request.config_dict[SECRET], DEVICE.read(request), account_key)
    return throttle.Keys(account_key, throttle.address_key("address", address), device)


async def _begin(request: web.Request, db: AsyncSession, email: str) -> Attempt:
    limits = throttle.sign_in_limits(request.config_dict[SETTINGS])
    return await begin_attempt(db, attempt_keys(request, email), email, limits)


async def _check(request: web.Request, attempt: Attempt, password: str) -> bool:
    return await check_password(request.config_dict[HASHING], request.config_dict[HASHER], attempt, password)


async def attempt_sign_in(request: web.Request, email: str, password: str) -> SignedIn | SecondFactorDue | SignInRefused:
    """Check credentials under throttling and, when right, start a new hub session, or, for an
    account with a second factor, ask for it first; counted in the hub's metrics."""
    outcome = await _attempt_sign_in(request, email, password)
    metrics = request.config_dict[HUB_METRICS]
    if isinstance(outcome, SignedIn):
        metrics.sign_ins.labels("succeeded").inc()
    elif isinstance(outcome, SecondFactorDue):
        metrics.second_factor.labels("asked").inc()
    return outcome


async def _attempt_sign_in(request: web.Request, email: str, password: str) -> SignedIn | SecondFactorDue | SignInRefused:
    sessions = request.config_dict[DB]
    try:
        async with autocommit(sessions) as db:
            attempt = await _begin(request, db, email)
    except SignInRefused as refused:
        request.config_dict[HUB_METRICS].sign_ins.labels("throttled").inc()
        return refused
    ok = await _check(request, attempt, password)
    due = ok and attempt.account_id is not None and _second_factor_due(request, attempt)
    device = devices.remember(request.config_dict[SECRET], DEVICE.read(request), attempt.keys.account) if ok and not due else None
    new_browser_of = attempt.account_id if device is not None else None
    if ok and not due and _plain(request, attempt) and dialect.opens_postgres(sessions):
        return SignedIn(await _sign_in_at_once(request, attempt), device, new_browser_of)
    async with unit(sessions) as db:
        outcome = await finish_attempt(db, attempt, ok, address=client_address(request))
        if isinstance(outcome, SignInRefused):
            request.config_dict[HUB_METRICS].sign_ins.labels("failed").inc()
            return outcome
        if due:
            return SecondFactorDue(second_factor.pending(request.config_dict[CIPHER], outcome))
        secret = await start_session(request, db, outcome, "pwd")
    return SignedIn(secret, device, new_browser_of)


def _second_factor_due(request: web.Request, attempt: Attempt) -> bool:
    """Whether the account has a second factor (read with it as the attempt began): an
    authenticator app, or a passkey (which the browser can use only where the hub has a relying
    party: an issuer with a host name)."""
    return attempt.has_app or (attempt.has_passkey and passkey_offers.relying_party(request) is not None)


async def start_session(request: web.Request, db: AsyncSession, account_id: int, amr: str) -> str:
    """A new hub session for the account; the browser's earlier one ends (its services hear of
    it as at sign-out)."""
    previous = await browser.current(request, db)
    if previous is not None:
        settings = request.config_dict[SETTINGS]
        after_commit.logout(db, request, await end_session(db, request.config_dict[PROVIDER].keys, settings.issuer, previous.session))
    return await browser.start(db, request, account_id, amr)


def set_cookies(request: web.Request, response: web.StreamResponse, signed_in: SignedIn) -> None:
    browser.set_cookie(request, response, signed_in.secret)
    if signed_in.device_cookie is not None:
        DEVICE.set(request, response, signed_in.device_cookie, max_age=DEVICE_COOKIE_DAYS * 86400)


async def signed_in_answer(request: web.Request, target: str, signed_in: SignedIn) -> web.StreamResponse:
    """The redirect after a completed sign-in, with its cookies; a browser new to the account
    has the person told (after the answer)."""
    response = redirect(target, 303)
    set_cookies(request, response, signed_in)
    if signed_in.new_browser_of is not None:
        async with autocommit(request.config_dict[DB]) as db:
            message = await new_browser.notice(db, request.config_dict[SETTINGS], signed_in.new_browser_of, request.headers.get("User-Agent"))
        if message is not None:
            await after_commit.send_mail(request, [message])
    return response


@dataclass
class Confirmation:
    """A signed-in person's password, typed again to confirm a change."""

    ok: bool
    #: The answer when the person is signed out for too many wrong passwords.
    ended: web.StreamResponse | None = None


async def confirm_password(request: web.Request, signed_in: browser.SignedIn, password: str) -> Confirmation:
    """Check the signed-in person's password under the same throttle as signing in (the same
    keys: their address, the client's, their known browser). The wrong password that reaches the
    limit ends the session: whoever is at the keyboard must sign in again, and waits first."""
    sessions = request.config_dict[DB]
    try:
        async with autocommit(sessions) as db:
            attempt = await _begin(request, db, signed_in.account.email)
    except SignInRefused as refused:
        return Confirmation(False, await _signed_out_for_guessing(request, refused.message))
    ok = await _check(request, attempt, password) and attempt.account_id == signed_in.account.id
    async with sessions.begin() as db:
        await settle(db, attempt, ok)
    if not ok and attempt.wait_if_wrong is not None:
        return Confirmation(False, await _signed_out_for_guessing(request, wrong(attempt, _("The password is not correct.")).message))
    return Confirmation(ok)


async def end_current_session(request: web.Request) -> None:
    """End this browser's hub session, if any; its services hear of it by back-channel logout."""
    settings = request.config_dict[SETTINGS]
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is not None:
            after_commit.logout(db, request, await end_session(db, request.config_dict[PROVIDER].keys, settings.issuer, signed_in.session))


async def _signed_out_for_guessing(request: web.Request, reason: str) -> web.StreamResponse:
    await end_current_session(request)
    response = render(
        request,
        "message.html",
        {
            "title": _("You are signed out"),
            # Translators: %(reason)s is a sentence saying why (e.g. "Too many failed attempts: try again in 60 seconds.").
            "message": _("%(reason)s For your security you are signed out of the hub; sign in again.", reason=reason),
            "next": "/sign-in",
        },
        status=429,
    )
    browser.clear_cookie(request, response)
    return response


def _plain(request: web.Request, attempt: Attempt) -> bool:
    """A success with nothing more to do: no rehash, no earlier session to end."""
    return not attempt.new_hash and browser.SESSION.read(request) is None


async def _sign_in_at_once(request: web.Request, attempt: Attempt) -> str:
    """The common successful sign-in on Postgres, in one statement (``sign_in_at_once``)."""
    assert attempt.account_id is not None
    row, secret = browser.new_session(request, attempt.account_id)
    async with autocommit(request.config_dict[DB]) as db:
        await sign_in_at_once(db, attempt, row, address=client_address(request))
    return secret


def ask_second_factor(request: web.Request, due: SecondFactorDue, target: str) -> web.StreamResponse:
    response = redirect(f"/sign-in/code?next={quote(target, safe='/')}", 303)
    SECOND_FACTOR.set(request, response, due.pending, max_age=second_factor.PENDING_SECONDS)
    return response


async def sign_in_page(request: web.Request) -> web.Response:
    return passkey_offers.sign_in_page(request, {"next": safe_next(request.query.get("next")), "action": "/sign-in"}, "/sign-in/passkey")


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await csrf.checked_form(request)
    email, password = field(form, "email", 320), field(form, "password", 1024)
    target = safe_next(field(form, "next"))
    outcome = await attempt_sign_in(request, email, password)
    if isinstance(outcome, SignInRefused):
        context = {"next": target, "action": "/sign-in", "email": email, "error": outcome.message}
        return passkey_offers.sign_in_page(request, context, "/sign-in/passkey", status=outcome.status)
    if isinstance(outcome, SecondFactorDue):
        return ask_second_factor(request, outcome, target)
    return await signed_in_answer(request, target, outcome)


async def sign_out(request: web.Request) -> web.StreamResponse:
    await csrf.checked_form(request)
    await end_current_session(request)
    response = render(request, "message.html", {"title": _("You are signed out"), "message": _("You have signed out of the hub.")})
    browser.clear_cookie(request, response)
    return response


async def _service_name(db: AsyncSession, client_id: str) -> str:
    name = await db.scalar(select(Service.name).where(Service.client_id == client_id))
    return name or client_id


async def interaction_page(request: web.Request) -> web.StreamResponse:
    uid = request.match_info["uid"]
    async with request.config_dict[DB].begin() as db:
        interaction = await interactions.find(db, uid, INTERACTION.read(request))
        if interaction is None:
            return expired_interaction(request)
        signed_in = await browser.current(request, db)
        details = interactions.details(interaction)
        service = await _service_name(db, details.client_id)
        fresh = interactions.Decision(fresh_since=details.started_at)
        if interactions.needs_sign_in(signed_in.auth_time if signed_in else None, details.prompts, details.max_age, fresh):
            context = {"action": f"/i/{uid}/login", "service": service, "register_next": f"/i/{uid}"}
            return passkey_offers.sign_in_page(request, context, f"/i/{uid}/passkey")
        assert signed_in is not None
        if assurance.needs_second_factor(details.acr_values, signed_in.session.amr):
            return await _step_up(request, db, uid, service, signed_in)
        requested = scopes.split(details.scope)
        return render(
            request,
            "consent.html",
            {
                "uid": uid,
                "service": service,
                "email": signed_in.account.email,
                "scopes": scopes.described(requested),
            },
        )


async def _step_up(request: web.Request, db: AsyncSession, uid: str, service: str, signed_in: browser.SignedIn) -> web.StreamResponse:
    """The service asked for two steps and this session had one: the code, or how to set it up."""
    if not await second_factor.enrolled(db, signed_in.account.id) and not await passkeys.count(db, signed_in.account.id):
        context = {
            "title": _("Set up two-step sign-in first"),
            "message": _(
                "%(service)s asks you to sign in with two steps: your password and a code from an authenticator app or a passkey. "
                "Set up two-step sign-in or add a passkey on your account page, then come back here to continue.",
                service=service,
            ),
            "next": "/account/two-step",
            "next_label": _("Set up two-step sign-in"),
            "also": {"href": f"/i/{uid}", "label": _("I have set it up: continue to %(service)s", service=service)},
        }
        return render(request, "message.html", context, status=403)
    context = {"next": f"/i/{uid}/resume", "service": service, "step_up": True}
    response = await passkey_offers.code_page(request, db, signed_in.account.id, context)
    sealed = second_factor.pending(request.config_dict[CIPHER], signed_in.account.id, step_up=True)
    SECOND_FACTOR.set(request, response, sealed, max_age=second_factor.PENDING_SECONDS)
    return response


async def interaction_login(request: web.Request) -> web.StreamResponse:
    uid = request.match_info["uid"]
    form = await csrf.checked_form(request)
    email, password = field(form, "email", 320), field(form, "password", 1024)
    async with request.config_dict[DB].begin() as db:
        interaction = await interactions.find(db, uid, INTERACTION.read(request))
        if interaction is None:
            return expired_interaction(request)
        service = await _service_name(db, interactions.details(interaction).client_id)
    outcome = await attempt_sign_in(request, email, password)
    if isinstance(outcome, SignInRefused):
        context = {
            "action": f"/i/{uid}/login",
            "service": service,
            "email": email,
            "error": outcome.message,
            "register_next": f"/i/{uid}",
        }
        return passkey_offers.sign_in_page(request, context, f"/i/{uid}/passkey", status=outcome.status)
    if isinstance(outcome, SecondFactorDue):
        return ask_second_factor(request, outcome, f"/i/{uid}/resume")
    return await signed_in_answer(request, f"/i/{uid}/resume", outcome)


async def interaction_consent(request: web.Request) -> web.StreamResponse:
    uid = request.match_info["uid"]
    form = await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        interaction = await interactions.find(db, uid, INTERACTION.read(request))
        if interaction is None:
            return expired_interaction(request)
        if await browser.current(request, db) is None:
            return redirect(f"/i/{uid}", 303)
        interactions.finish_consent(interaction, allowed=form.get("decision") == "allow")
    return redirect(f"/i/{uid}/resume", 303)
