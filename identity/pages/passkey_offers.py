"""Pages that offer a passkey ceremony: each render starts one (a fresh challenge, sealed in the
``osi_passkey`` cookie) and gives the page the options its script hands to the browser. On an
issuer whose host is an IP address there are no passkeys, and the pages offer none.
(The ceremonies' answers are ``identity.pages.passkeys``.)"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import passkeys, second_factor
from identity.appkeys import CIPHER, SETTINGS
from identity.db.models import Account
from identity.pages.common import render
from identity.web.cookies import PASSKEY


def relying_party(request: web.Request) -> passkeys.RelyingParty | None:
    return passkeys.relying_party(request.config_dict[SETTINGS].issuer)


def ceremony(request: web.Request, purpose: passkeys.Purpose) -> passkeys.Ceremony | None:
    """The ceremony this browser is answering, while it runs."""
    return passkeys.opened(request.config_dict[CIPHER], PASSKEY.read(request), purpose)


def _rendered(request: web.Request, template: str, context: dict[str, Any], sealed: str | None, status: int) -> web.Response:
    response = render(request, template, context, status=status)
    if sealed is not None:
        PASSKEY.set(request, response, sealed, max_age=passkeys.CEREMONY_SECONDS)
    return response


def sign_in_page(request: web.Request, context: dict[str, Any], passkey_action: str, status: int = 200) -> web.Response:
    """The sign-in page, offering a passkey (its own button, and the browser's autofill)."""
    rp = relying_party(request)
    sealed = None
    if rp is not None:
        started, sealed = passkeys.begin(request.config_dict[CIPHER], "sign-in")
        context = context | {"passkey": {"action": passkey_action, "options": passkeys.sign_in_options(rp, started)}}
    return _rendered(request, "sign_in.html", context, sealed, status)


async def code_page(request: web.Request, db: AsyncSession, account_id: int, context: dict[str, Any], status: int = 200) -> web.Response:
    """The step after the password: a code field when the account has an authenticator app, a
    passkey button when it has passkeys (either will do)."""
    context = context | {"totp": await second_factor.enrolled(db, account_id)}
    rp = relying_party(request)
    sealed = None
    if rp is not None and await passkeys.count(db, account_id):
        started, sealed = passkeys.begin(request.config_dict[CIPHER], "second-factor", account_id)
        options = await passkeys.second_factor_options(db, rp, started, account_id)
        context |= {"passkey": {"action": "/sign-in/code/passkey", "options": options}}
    return _rendered(request, "sign_in_code.html", context, sealed, status)


async def registration(request: web.Request, db: AsyncSession, account: Account) -> tuple[dict[str, Any] | None, str | None]:
    """What the account page needs to add a passkey (options and action), and the sealed
    ceremony for its cookie; (None, None) on a hub without passkeys."""
    rp = relying_party(request)
    if rp is None:
        return None, None
    handle = await passkeys.user_handle(db, account.id)
    started, sealed = passkeys.begin(request.config_dict[CIPHER], "register", account.id, handle=handle)
    return {"action": "/account/passkeys", "options": await passkeys.registration_options(db, rp, started, account)}, sealed


def set_ceremony(request: web.Request, response: web.StreamResponse, sealed: str | None) -> None:
    if sealed is not None:
        PASSKEY.set(request, response, sealed, max_age=passkeys.CEREMONY_SECONDS)
