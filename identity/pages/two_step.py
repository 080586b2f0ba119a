"""Two-step sign-in for people: the code asked for after a right password
(``/sign-in/code``), and setting up, renewing the recovery codes of, and removing the second
factor from the account page (``/account/two-step``). The factor itself is
``identity.accounts.second_factor``; wrong codes are counted like wrong passwords
(``identity.accounts.throttle``: per account and per client address)."""

from __future__ import annotations

from typing import Any

import segno
from aiohttp import web

from identity.accounts import devices, second_factor, throttle
from identity.accounts.sign_in import SignInRefused
from identity.appkeys import CIPHER, DB, HUB_METRICS, SECRET, SETTINGS
from identity.i18n import _, lazy_gettext, ngettext
from identity.db.engine import autocommit
from identity.db.models import Account
from identity.db.units import unit
from identity.oidc import assurance
from identity.pages import passkey_offers
from identity.pages.common import client_address, field, render
from identity.pages.sign_in import (
    SignedIn,
    confirm_password,
    signed_in_answer,
    start_session,
)
from identity.web import after_commit, browser, csrf
from identity.web.cookies import DEVICE, SECOND_FACTOR
from identity.web.responses import redirect, safe_next

EXPIRED = {
    "title": lazy_gettext("Sign in again"),
    "message": lazy_gettext("Your sign-in waited too long for its code, or was not started in this browser. Sign in again."),
    "next": "/sign-in",
    "next_label": lazy_gettext("Sign in"),
}
WRONG_CODE = lazy_gettext("That code is not right, or was already used. Enter the current code from your app, or a recovery code.")


def _keys(request: web.Request, account: Account) -> list[tuple[str, throttle.Limit]]:
    account_limit, address_limit = throttle.sign_in_limits(request.config_dict[SETTINGS])
    return [
        (throttle.email_key("second-factor", account.email), account_limit),
        (throttle.address_key("address", client_address(request)), address_limit),
    ]


async def code_page(request: web.Request) -> web.StreamResponse:
    target = safe_next(request.query.get("next"))
    waiting = second_factor.pending_account(request.config_dict[CIPHER], SECOND_FACTOR.read(request))
    if waiting is None:
        return render(request, "message.html", EXPIRED, status=400)
    async with autocommit(request.config_dict[DB]) as db:
        return await passkey_offers.code_page(request, db, waiting.account_id, {"next": target})


async def code(request: web.Request) -> web.StreamResponse:
    """Check the code under the password's throttle; right, start the session (``pwd otp``)."""
    form = await csrf.checked_form(request)
    target = safe_next(field(form, "next"))
    typed = field(form, "code", 40)
    waiting = second_factor.pending_account(request.config_dict[CIPHER], SECOND_FACTOR.read(request))
    if waiting is None:
        return render(request, "message.html", EXPIRED, status=400)
    account_id = waiting.account_id
    async with autocommit(request.config_dict[DB]) as db:
        account = await db.get(Account, account_id)
        if account is None:
            return render(request, "message.html", EXPIRED, status=400)
        keys = _keys(request, account)
        counted = await throttle.take_all(db, keys)
    metrics = request.config_dict[HUB_METRICS]
    if counted.refused:
        metrics.second_factor.labels("throttled").inc()
        refused = SignInRefused(
            ngettext(
                "Too many wrong codes. Try again in %(num)d second.", "Too many wrong codes. Try again in %(num)d seconds.", counted.wait
            ),
            429,
        )
        async with autocommit(request.config_dict[DB]) as db:
            return await passkey_offers.code_page(request, db, account_id, {"next": target, "error": refused.message}, status=429)
    async with unit(request.config_dict[DB]) as db:
        used = await second_factor.check(db, request.config_dict[CIPHER], account_id, typed)
        if used is not None:
            await throttle.clear(db, keys[0][0])
            await throttle.refund(db, keys[1][0])
            if waiting.step_up:
                # Only the session that asked: a code alone never starts one without the password.
                current = await browser.current(request, db)
                if current is None or current.account.id != account_id:
                    return render(request, "message.html", EXPIRED, status=400)
                secret = await browser.step_up(db, current.session, assurance.WITH_CODE)
            else:
                secret = await start_session(request, db, account_id, assurance.WITH_CODE)
    if used is None:
        metrics.second_factor.labels("failed").inc()
        error = WRONG_CODE + (f" Too many wrong codes: try again in {counted.wait} seconds." if counted.wait else "")
        async with autocommit(request.config_dict[DB]) as db:
            return await passkey_offers.code_page(request, db, account_id, {"next": target, "error": error}, status=429 if counted.wait else 400)
    metrics.second_factor.labels("passed").inc()
    if not waiting.step_up:
        metrics.sign_ins.labels("succeeded").inc()
    device = devices.remember(request.config_dict[SECRET], DEVICE.read(request), throttle.email_key("account", account.email))
    response = await signed_in_answer(request, target, SignedIn(secret, device, account_id if device is not None else None))
    SECOND_FACTOR.clear(request, response)
    return response


def qr_svg(uri: str) -> str:
    """The otpauth:// URI as a QR code, an inline SVG drawn on the server."""
    return segno.make(uri, error="m").svg_inline(scale=5, dark="#1b1f24", title="QR code for your authenticator app")


async def _signed_in(request: web.Request) -> browser.SignedIn | None:
    async with autocommit(request.config_dict[DB]) as db:
        return await browser.current(request, db)


async def settings_page(request: web.Request) -> web.StreamResponse:
    """Two-step sign-in on or off; when off, a secret to set up (kept until confirmed)."""
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account/two-step")
        setup = await second_factor.start_enrolment(db, request.config_dict[CIPHER], signed_in.account.id, signed_in.account.email)
        left = await second_factor.recovery_left(db, signed_in.account.id)
    return _settings(request, setup, left)


def _settings(request: web.Request, setup: second_factor.Enrolment | None, left: int, status: int = 200, **extra: Any) -> web.Response:
    context: dict[str, Any] = {"enrolled": setup is None, "recovery_left": left, **extra}
    if setup is not None:
        context |= {"qr": qr_svg(setup.uri), "secret": " ".join(setup.secret[i : i + 4] for i in range(0, len(setup.secret), 4)), "uri": setup.uri}
    return render(request, "two_step.html", context, status=status)


async def enrol(request: web.Request) -> web.StreamResponse:
    """Turn two-step sign-in on with a first right code; the recovery codes are shown once."""
    form = await csrf.checked_form(request)
    async with unit(request.config_dict[DB]) as db:
        signed_in = await browser.current(request, db)
        if signed_in is None:
            return redirect("/sign-in?next=/account/two-step", 303)
        account = signed_in.account
        codes = await second_factor.confirm_enrolment(db, request.config_dict[CIPHER], account.id, field(form, "code", 40))
        if codes is None:
            setup = await second_factor.start_enrolment(db, request.config_dict[CIPHER], account.id, account.email)
        else:
            after_commit.mail(db, request, [second_factor.notice(request.config_dict[SETTINGS], account.email, "on", locale=account.locale)])
    if codes is None:
        if setup is None:
            return redirect("/account/two-step", 303)
        return _settings(request, setup, 0, status=400, error=_("That code is not right. Enter the code your app shows now."))
    return render(request, "recovery_codes.html", {"codes": codes, "first": True})


async def _with_password(request: web.Request) -> tuple[browser.SignedIn | None, web.StreamResponse | None]:
    form = await csrf.checked_form(request)
    signed_in = await _signed_in(request)
    if signed_in is None:
        return None, redirect("/sign-in?next=/account/two-step", 303)
    confirmed = await confirm_password(request, signed_in, field(form, "current_password", 1024))
    if confirmed.ended is not None:
        return None, confirmed.ended
    if not confirmed.ok:
        async with autocommit(request.config_dict[DB]) as db:
            left = await second_factor.recovery_left(db, signed_in.account.id)
        return None, _settings(request, None, left, status=400, password_error=_("Your password is not correct."))
    return signed_in, None


async def new_recovery_codes(request: web.Request) -> web.StreamResponse:
    signed_in, refused = await _with_password(request)
    if signed_in is None:
        assert refused is not None
        return refused
    async with unit(request.config_dict[DB]) as db:
        codes = await second_factor.new_recovery(db, signed_in.account.id)
        if codes is not None:
            after_commit.mail(db, request, [second_factor.notice(request.config_dict[SETTINGS], signed_in.account.email, "recovery", locale=signed_in.account.locale)])
    if codes is None:
        return redirect("/account/two-step", 303)
    return render(request, "recovery_codes.html", {"codes": codes, "first": False})


async def remove(request: web.Request) -> web.StreamResponse:
    """Turn two-step sign-in off, behind the password."""
    signed_in, refused = await _with_password(request)
    if signed_in is None:
        assert refused is not None
        return refused
    async with unit(request.config_dict[DB]) as db:
        if await second_factor.remove(db, signed_in.account.id):
            after_commit.mail(db, request, [second_factor.notice(request.config_dict[SETTINGS], signed_in.account.email, "off", locale=signed_in.account.locale)])
    return redirect("/account?two_step=off", 303)
