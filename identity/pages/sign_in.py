"""Signing in and out: the hub's own sign-in page, and the sign-in and consent steps of an
authorization request (``/i/{uid}``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import bindparam, delete, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import devices, throttle
from identity.appkeys import DB, HASHER, PROVIDER, SECRET, SETTINGS
from identity.db import dialect
from identity.db.engine import autocommit
from identity.db.models import (
    Account,
    BrowserSession,
    Service,
    SignInEvent,
    Throttle,
    UTCDateTime,
    utcnow,
)
from identity.db.units import unit
from identity.oidc import interactions, scopes
from identity.oidc.logout import end_session
from identity.pages.common import (
    client_address,
    field,
    hash_password,
    render,
    verify_password,
)
from identity.web import after_commit, browser, csrf
from identity.web.cookies import DEVICE, INTERACTION
from identity.web.responses import expired_interaction, redirect, safe_next
from schemas.account import normalize_email

WRONG = "The email address or password is incorrect."
#: How long a browser is remembered for the accounts signed in with it.
DEVICE_COOKIE_DAYS = 365


class SignInRefused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Attempt:
    """A password check between its two short transactions (the password is checked between
    them, so no database connection is held while argon2id runs)."""

    keys: throttle.Keys
    account_id: int | None
    password_hash: str | None
    #: Seconds the next attempt must wait if this one fails (it reached the limit), or None.
    wait_if_wrong: int | None
    new_hash: str | None = None

    @property
    def cleared_key(self) -> str:
        """The key a success clears: the known browser's, else the typed address's."""
        return self.keys.device or self.keys.account

    @property
    def refunded_key(self) -> str | None:
        """The key a success gives its attempt back to: the client address (a stranger's)."""
        return None if self.keys.device else self.keys.address


@dataclass
class SignedIn:
    """A successful sign-in: the new session's cookie secret, and the browser's device cookie
    when it changed (``identity.accounts.devices``)."""

    secret: str
    device_cookie: str | None


def attempt_keys(request: web.Request, email: str) -> throttle.Keys:
    address = client_address(request)
    account_key = throttle.email_key("account", email)
    device = devices.recognised(request.config_dict[SECRET], DEVICE.read(request), account_key)
    return throttle.Keys(account_key, throttle.address_key("address", address), device)


async def begin_attempt(request: web.Request, db: AsyncSession, email: str) -> Attempt:
    """Count the attempt before the password is checked, refusing it at once while a wait runs,
    and find the account the email names (two statements: a read of the account and the
    atomic count)."""
    keys = attempt_keys(request, email)
    try:
        normalized: str | None = normalize_email(email)
    except ValueError:
        normalized = None
    account_id, password_hash = (await db.execute(_FIND_ACCOUNT, {"email": normalized})).one()
    account_limit, address_limit = throttle.sign_in_limits(request.config_dict[SETTINGS])
    if keys.device:
        counts = [(keys.device, account_limit)]
    else:
        counts = [(keys.account, account_limit), (keys.address, address_limit)]
    counted = await throttle.take_all(db, counts)
    if counted.refused:
        raise SignInRefused(f"Too many failed attempts. Try again in {counted.wait} seconds.", 429)
    return Attempt(keys, account_id, password_hash, counted.wait)


async def check_password(request: web.Request, attempt: Attempt, password: str) -> bool:
    ok = await verify_password(request, attempt.password_hash, password) and attempt.account_id is not None
    if ok and attempt.password_hash and request.config_dict[HASHER].needs_rehash(attempt.password_hash):
        attempt.new_hash = await hash_password(request, password)
    return ok


def wrong(attempt: Attempt, message: str = WRONG) -> SignInRefused:
    if attempt.wait_if_wrong is not None:
        return SignInRefused(f"{message} Too many failed attempts: try again in {attempt.wait_if_wrong} seconds.", 429)
    return SignInRefused(message, 400)


async def settle(db: AsyncSession, attempt: Attempt, ok: bool) -> None:
    """A success clears the streak (the known browser's, else the typed address's) and gives
    the client address its attempt back; a failure leaves the counts as they were counted."""
    if ok:
        await throttle.clear(db, attempt.cleared_key)
        if attempt.refunded_key is not None:
            await throttle.refund(db, attempt.refunded_key)
        if attempt.new_hash:
            await db.execute(update(Account).where(Account.id == attempt.account_id).values(password_hash=attempt.new_hash))


async def finish_attempt(request: web.Request, db: AsyncSession, attempt: Attempt, ok: bool) -> int | SignInRefused:
    """Record the outcome (throttle counters, sign-in history) and return the account id, or
    the refusal to show. The caller commits either way."""
    event = {"address": client_address(request), "at": utcnow()}
    await settle(db, attempt, ok)
    if not ok or attempt.account_id is None:
        if attempt.account_id is not None:
            await db.execute(insert(SignInEvent).values(account_id=attempt.account_id, succeeded=False, **event))
        return wrong(attempt)
    await db.execute(insert(SignInEvent).values(account_id=attempt.account_id, succeeded=True, **event))
    return attempt.account_id


async def attempt_sign_in(request: web.Request, email: str, password: str) -> SignedIn | SignInRefused:
    """Check credentials under throttling and, when right, start a new hub session."""
    sessions = request.config_dict[DB]
    try:
        async with autocommit(sessions) as db:
            attempt = await begin_attempt(request, db, email)
    except SignInRefused as refused:
        return refused
    ok = await check_password(request, attempt, password)
    device = devices.remember(request.config_dict[SECRET], DEVICE.read(request), attempt.keys.account) if ok else None
    if ok and _plain(request, attempt) and dialect.opens_postgres(sessions):
        return SignedIn(await _sign_in_at_once(request, attempt), device)
    async with unit(sessions) as db:
        outcome = await finish_attempt(request, db, attempt, ok)
        if isinstance(outcome, SignInRefused):
            return outcome
        previous = await browser.current(request, db)
        if previous is not None:
            # The browser's earlier session ends here; its services hear of it as at sign-out.
            settings = request.config_dict[SETTINGS]
            after_commit.logout(db, request, await end_session(db, request.config_dict[PROVIDER].keys, settings.issuer, previous.session))
        secret = await browser.start(db, request, outcome)
    return SignedIn(secret, device)


def set_cookies(request: web.Request, response: web.StreamResponse, signed_in: SignedIn) -> None:
    browser.set_cookie(request, response, signed_in.secret)
    if signed_in.device_cookie is not None:
        DEVICE.set(request, response, signed_in.device_cookie, max_age=DEVICE_COOKIE_DAYS * 86400)


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
            attempt = await begin_attempt(request, db, signed_in.account.email)
    except SignInRefused as refused:
        return Confirmation(False, await _signed_out_for_guessing(request, refused.message))
    ok = await check_password(request, attempt, password) and attempt.account_id == signed_in.account.id
    async with sessions.begin() as db:
        await settle(db, attempt, ok)
    if not ok and attempt.wait_if_wrong is not None:
        return Confirmation(False, await _signed_out_for_guessing(request, wrong(attempt, "The password is not correct.").message))
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
        {"title": "You are signed out", "message": f"{reason} For your security you are signed out of the hub; sign in again.", "next": "/sign-in"},
        status=429,
    )
    browser.clear_cookie(request, response)
    return response


def _plain(request: web.Request, attempt: Attempt) -> bool:
    """A success with nothing more to do: no rehash, no earlier session to end."""
    return not attempt.new_hash and browser.SESSION.read(request) is None


async def _sign_in_at_once(request: web.Request, attempt: Attempt) -> str:
    """The common successful sign-in on Postgres: the throttle streak is cleared, the address's
    attempt given back, and the session and the sign-in record written by one statement
    (data-modifying CTEs), atomic on its own, in one round trip."""
    assert attempt.account_id is not None
    row, secret = browser.new_session(request, attempt.account_id)
    params = {f"s_{c}": v for c, v in row.items()} | {
        "cleared_key": attempt.cleared_key,
        "refunded_key": attempt.refunded_key or "",
        "address": client_address(request),
    }
    async with autocommit(request.config_dict[DB]) as db:
        await db.execute(_signed_in(tuple(row)), params)
    return secret


# Built once: only their parameters change from one sign-in to the next, so SQLAlchemy neither
# rebuilds them nor recomputes their cache keys.
_FIND_ACCOUNT = select(
    select(Account.id).where(Account.email == bindparam("email")).scalar_subquery(),
    select(Account.password_hash).where(Account.email == bindparam("email")).scalar_subquery(),
)


@functools.cache
def _signed_in(columns: tuple[str, ...]) -> Any:
    throttles, sessions, events = Throttle.__table__, BrowserSession.__table__, SignInEvent.__table__
    cleared = delete(throttles).where(throttles.c.key == bindparam("cleared_key")).returning(throttles.c.key).cte("cleared")
    refunded = (
        update(throttles)
        .where(throttles.c.key == bindparam("refunded_key"), throttles.c.failures > 0)
        .values(failures=throttles.c.failures - 1)
        .returning(throttles.c.key)
        .cte("refunded")
    )
    session = (
        insert(sessions)
        .values({c: bindparam(f"s_{c}", type_=sessions.c[c].type) for c in columns})
        .returning(sessions.c.account_id)
        .cte("new_session")
    )
    return insert(events).from_select(
        ["account_id", "address", "succeeded", "at"],
        select(
            session.c.account_id,
            bindparam("address", type_=events.c.address.type),
            literal(True),
            bindparam("s_created_at", type_=UTCDateTime()),
        ),
    ).add_cte(cleared).add_cte(refunded)


async def sign_in_page(request: web.Request) -> web.Response:
    return render(request, "sign_in.html", {"next": safe_next(request.query.get("next")), "action": "/sign-in"})


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await csrf.checked_form(request)
    email, password = field(form, "email", 320), field(form, "password", 1024)
    target = safe_next(field(form, "next"))
    outcome = await attempt_sign_in(request, email, password)
    if isinstance(outcome, SignInRefused):
        context = {"next": target, "action": "/sign-in", "email": email, "error": outcome.message}
        return render(request, "sign_in.html", context, status=outcome.status)
    response = redirect(target, 303)
    set_cookies(request, response, outcome)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await csrf.checked_form(request)
    await end_current_session(request)
    response = render(request, "message.html", {"title": "You are signed out", "message": "You have signed out of the hub."})
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
            return render(
                request,
                "sign_in.html",
                {"action": f"/i/{uid}/login", "service": service, "register_next": f"/i/{uid}"},
            )
        assert signed_in is not None
        requested = scopes.split(details.scope)
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
        return render(request, "sign_in.html", context, status=outcome.status)
    response = redirect(f"/i/{uid}/resume", 303)
    set_cookies(request, response, outcome)
    return response


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
