"""Passkeys for people: signing in with one and no password (``/sign-in/passkey``, and an
authorization request's ``/i/{uid}/passkey``), one as the step after the password
(``/sign-in/code/passkey``), and adding and removing them from the account page
(``/account/passkeys``). The browser's side is ``static/passkeys.js``, which answers the ceremony
a page started (``identity.pages.passkey_offers``) and posts the result as an ordinary form, CSRF
token and all. The checks are ``identity.accounts.passkeys``'."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from sqlalchemy import insert, select

from identity.accounts import passkeys, second_factor
from identity.accounts.passkeys import PasskeyRefused
from identity.appkeys import CIPHER, DB, HUB_METRICS, SETTINGS
from identity.i18n import _
from identity.db.engine import autocommit
from identity.db.models import Passkey, Service, SignInEvent, utcnow
from identity.db.units import unit
from identity.oidc import assurance, interactions
from identity.pages import passkey_offers
from identity.pages.account import FRESH_SECONDS
from identity.pages.common import client_address, field, render
from identity.pages.sign_in import SignedIn, confirm_password, set_cookies, start_session
from identity.pages.two_step import EXPIRED as WAITED_TOO_LONG
from identity.web import after_commit, browser, csrf
from identity.web.cookies import INTERACTION, PASSKEY, SECOND_FACTOR
from identity.web.responses import expired_interaction, redirect, safe_next

#: The JSON the browser's script posts is bounded (a credential id is at most 1023 bytes).
CREDENTIAL_LENGTH = 16_000


def _done(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    PASSKEY.clear(request, response)
    return response


async def _sign_in(request: web.Request, credential: str) -> str | PasskeyRefused:
    """Check a passwordless sign-in and start the session: its cookie secret, or the refusal."""
    rp = passkey_offers.relying_party(request)
    started = passkey_offers.ceremony(request, "sign-in")
    if rp is None or started is None:
        return PasskeyRefused(passkeys.EXPIRED)
    async with unit(request.config_dict[DB]) as db:
        try:
            done = await passkeys.authenticate(db, rp, started, credential)
        except PasskeyRefused as refused:
            return refused  # the unit commits what the refusal recorded (a spent challenge, an audit record)
        await db.execute(insert(SignInEvent).values(account_id=done.account_id, succeeded=True, address=client_address(request), at=utcnow()))
        return await start_session(request, db, done.account_id, done.methods)


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await csrf.checked_form(request)
    target = safe_next(field(form, "next"))
    outcome = await _sign_in(request, field(form, "credential", CREDENTIAL_LENGTH))
    if isinstance(outcome, PasskeyRefused):
        context = {"next": target, "action": "/sign-in", "error": outcome.public, "unknown_credential": outcome.unknown_credential}
        return passkey_offers.sign_in_page(request, context, "/sign-in/passkey", status=400)
    return _done(request, _signed_in(request, target, outcome))


def _signed_in(request: web.Request, target: str, secret: str) -> web.StreamResponse:
    response = redirect(target, 303)
    set_cookies(request, response, SignedIn(secret, None))
    return response


async def interaction_sign_in(request: web.Request) -> web.StreamResponse:
    """A passkey sign-in on an authorization request's sign-in page."""
    uid = request.match_info["uid"]
    form = await csrf.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        interaction = await interactions.find(db, uid, INTERACTION.read(request))
        if interaction is None:
            return expired_interaction(request)
        client_id = interactions.details(interaction).client_id
        service = await db.scalar(select(Service.name).where(Service.client_id == client_id)) or client_id
    outcome = await _sign_in(request, field(form, "credential", CREDENTIAL_LENGTH))
    if isinstance(outcome, PasskeyRefused):
        context = {
            "action": f"/i/{uid}/login",
            "service": service,
            "error": outcome.public,
            "register_next": f"/i/{uid}",
            "unknown_credential": outcome.unknown_credential,
        }
        return passkey_offers.sign_in_page(request, context, f"/i/{uid}/passkey", status=400)
    return _done(request, _signed_in(request, f"/i/{uid}/resume", outcome))


async def second_step(request: web.Request) -> web.StreamResponse:
    """A passkey as the step after the password (or a service's step-up of this session)."""
    form = await csrf.checked_form(request)
    target = safe_next(field(form, "next"))
    waiting = second_factor.pending_account(request.config_dict[CIPHER], SECOND_FACTOR.read(request))
    rp = passkey_offers.relying_party(request)
    started = passkey_offers.ceremony(request, "second-factor")
    if waiting is None or rp is None:
        return render(request, "message.html", WAITED_TOO_LONG, status=400)
    refused: PasskeyRefused | None = None
    async with unit(request.config_dict[DB]) as db:
        try:
            if started is None or started.account_id != waiting.account_id:
                raise PasskeyRefused(passkeys.EXPIRED)
            done = await passkeys.authenticate(db, rp, started, field(form, "credential", CREDENTIAL_LENGTH))
        except PasskeyRefused as exc:
            refused = exc
        else:
            methods = assurance.with_passkey("pwd", done.methods)
            if waiting.step_up:
                current = await browser.current(request, db)
                if current is None or current.account.id != waiting.account_id:
                    return render(request, "message.html", WAITED_TOO_LONG, status=400)
                secret = await browser.step_up(db, current.session, assurance.with_passkey(current.session.amr, done.methods))
            else:
                secret = await start_session(request, db, waiting.account_id, methods)
    metrics = request.config_dict[HUB_METRICS]
    if refused is not None:
        metrics.second_factor.labels("failed").inc()
        async with autocommit(request.config_dict[DB]) as db:
            return await passkey_offers.code_page(request, db, waiting.account_id, {"next": target, "error": refused.public}, status=400)
    metrics.second_factor.labels("passed").inc()
    if not waiting.step_up:
        metrics.sign_ins.labels("succeeded").inc()
    response = _signed_in(request, target, secret)
    SECOND_FACTOR.clear(request, response)
    return _done(request, response)


# -- the account page's passkeys --------------------------------------------------------------


def fresh(signed_in: browser.SignedIn, now: dt.datetime | None = None) -> bool:
    return (now or utcnow()) - signed_in.auth_time <= dt.timedelta(seconds=FRESH_SECONDS)


async def _reauthenticated(request: web.Request, signed_in: browser.SignedIn, form: Any) -> tuple[bool, web.StreamResponse | None]:
    """A recent sign-in, or the password typed again (throttled as at sign-in)."""
    if fresh(signed_in):
        return True, None
    confirmed = await confirm_password(request, signed_in, field(form, "current_password", 1024))
    return confirmed.ok, confirmed.ended


async def add(request: web.Request) -> web.StreamResponse:
    """Keep the passkey the browser just created, under the name the person gave it."""
    form = await csrf.checked_form(request)
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
    if signed_in is None:
        return redirect("/sign-in?next=/account", 303)
    ok, ended = await _reauthenticated(request, signed_in, form)
    if ended is not None:
        return ended
    if not ok:
        return _account_error(request, _("Your password is not correct. Enter it to add a passkey, or sign in again first."))
    rp = passkey_offers.relying_party(request)
    started = passkey_offers.ceremony(request, "register")
    name = passkeys.clean_name(field(form, "name", 200))
    async with unit(request.config_dict[DB]) as db:
        try:
            if rp is None or started is None:
                raise PasskeyRefused(passkeys.EXPIRED)
            await passkeys.register(db, rp, started, signed_in.account, field(form, "credential", CREDENTIAL_LENGTH), name)
        except PasskeyRefused as refused:
            error = refused.public
        else:
            error = None
            after_commit.mail(db, request, [passkeys.notice(request.config_dict[SETTINGS], signed_in.account.email, "added", name, locale=signed_in.account.locale)])
    if error is not None:
        return _account_error(request, error)
    return _done(request, redirect("/account?passkey=added#passkeys", 303))


def _account_error(request: web.Request, message: str) -> web.StreamResponse:
    context = {
        "title": _("Your passkey was not added"),
        "message": message,
        "next": "/account#passkeys",
        "next_label": _("Back to your account"),
    }
    return render(request, "message.html", context, status=400)


async def _owned(request: web.Request, db: Any, signed_in: browser.SignedIn) -> Passkey | None:
    try:
        passkey_id = int(request.match_info["id"])
    except ValueError:
        return None
    return await db.scalar(select(Passkey).where(Passkey.id == passkey_id, Passkey.account_id == signed_in.account.id))


async def remove_page(request: web.Request) -> web.StreamResponse:
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account")
        key = await _owned(request, db, signed_in)
    if key is None:
        raise web.HTTPNotFound(text="404: Not Found")
    return render(request, "passkey_remove.html", {"passkey": key, "fresh": fresh(signed_in), "signed_in": True})


async def remove(request: web.Request) -> web.StreamResponse:
    """Remove a passkey, behind the password or a recent sign-in."""
    form = await csrf.checked_form(request)
    async with autocommit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account", 303)
        key = await _owned(request, db, signed_in)
    if key is None:
        raise web.HTTPNotFound(text="404: Not Found")
    ok, ended = await _reauthenticated(request, signed_in, form)
    if ended is not None:
        return ended
    if not ok:
        context = {"passkey": key, "fresh": False, "signed_in": True, "error": _("Your password is not correct.")}
        return render(request, "passkey_remove.html", context, status=400)
    async with unit(request.config_dict[DB]) as db:
        removed = await passkeys.remove(db, signed_in.account, key.id)
        if removed is not None:
            after_commit.mail(db, request, [passkeys.notice(request.config_dict[SETTINGS], signed_in.account.email, "removed", removed.name, locale=signed_in.account.locale)])
    return redirect("/account?passkey=removed#passkeys", 303)
