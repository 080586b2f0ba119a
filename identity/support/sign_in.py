"""Signing in to the console and out of it, in order:

1. ``GET /login``: start the code flow to the hub itself (the console is its first-party client);
   ``state``, ``nonce`` and the PKCE verifier wait in a signed cookie at path ``/support``;
2. the hub's own sign-in page asks for the password (``prompt=login``);
3. ``GET /callback``: check ``state`` and ``iss``, redeem the code, validate the ID token, find
   the staff member (anyone else gets one plain 403 page), open a session in stage ``totp``;
4. ``GET/POST /totp``: a six-digit code, each accepted once (``staff.check_code``). Wrong codes
   are counted before a code is checked, atomically (parallel submissions cannot get past the count): five end the
   session, and five in a row across sessions lock the staff member's codes for 15 minutes,
   doubling with each further wrong one; a right code resets the count. The right one replaces
   the session by a new ``active`` one (no fixation). A staff member who has not enrolled TOTP
   yet (a role granted in the console) sees a fresh ``otpauth://`` URI here, theirs alone, and
   confirms it with a first code;
5. ``POST /logout``: end the console session (the hub session is left alone).

Console sessions are separate from the person's hub session: the hub's cookie opens nothing
here, and signing out here does not sign the person out of the hub."""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.support.words import _, lazy_gettext
from identity.appkeys import CIPHER, DB, PROVIDER, SECRET, SETTINGS
from identity.db.models import Account, AccountStatus, ConsoleSession, StaffMember, utcnow
from identity.pages.common import client_address, field
from identity.support import console_client, forms, session
from identity.support import staff as staff_members
from identity.support.console_client import Pending, SignInFailed
from identity.support.render import render
from identity.web.cookies import CONSOLE_LOGIN
from identity.web.responses import redirect

log = logging.getLogger(__name__)

PENDING_COOKIE = CONSOLE_LOGIN.base
HOME = f"{session.PATH}/"
LOGIN = f"{session.PATH}/login"
TOTP = f"{session.PATH}/totp"
REFUSED = lazy_gettext("This account cannot use the support console.")
LOCKED = lazy_gettext("Too many wrong codes in a row: two-factor sign-in is locked for a while. Try again later.")


def add_routes(console: web.Application) -> None:
    r = console.router
    r.add_get("/login", login, name="console_login")
    r.add_get("/callback", callback, name="console_callback")
    r.add_get("/totp", totp_page, name="console_totp")
    r.add_post("/totp", totp_submit)
    r.add_post("/logout", logout, name="console_logout")


def _notice(request: web.Request, title: str, message: str, status: int, *, again: bool = True) -> web.Response:
    return render(request, "console_notice.html", {"title": title, "message": message, "again": again}, status=status)


async def login(request: web.Request) -> web.StreamResponse:
    settings = request.config_dict[SETTINGS]
    async with request.config_dict[DB].begin() as db:
        agent = await session.current(request, db)
        if agent is not None and agent.stage == "active":
            return redirect(HOME, 303)
        await console_client.ensure_client(db, settings, request.config_dict[SECRET])
    pending = Pending.new()
    response = redirect(console_client.authorization_url(settings, pending), 303)
    CONSOLE_LOGIN.set(request, response, pending.seal(request.config_dict[SECRET]), path=session.PATH, max_age=console_client.PENDING_TTL)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    settings, hub_secret = request.config_dict[SETTINGS], request.config_dict[SECRET]
    provider, sessions = request.config_dict[PROVIDER], request.config_dict[DB]
    pending = Pending.unseal(request.cookies.get(CONSOLE_LOGIN.name(request)), hub_secret)
    try:
        code = console_client.check_callback(request.query, settings, pending)
        assert pending is not None
        # Committed whatever the answer: a replayed code revokes what it issued.
        async with sessions.begin() as db:
            status, body = await console_client.exchange(db, provider, settings, hub_secret, code, pending)
        sub = console_client.verified_sub(provider, settings, console_client.token_or_fail(status, body), pending)
    except SignInFailed as exc:
        log.info("console sign-in failed: %s", exc.detail)
        response = _notice(request, _("Sign-in not completed"), exc.public, 400)
        CONSOLE_LOGIN.clear(request, response, path=session.PATH)
        return response

    async with sessions.begin() as db:
        previous = await session.current(request, db)
        if previous is not None:
            # A new sign-in in this browser ends the console session it had.
            await db.execute(update(ConsoleSession).where(ConsoleSession.id == previous.session_id).values(ended_at=utcnow()))
        found = (
            await db.execute(
                select(StaffMember, Account.email)
                .join(Account, Account.id == StaffMember.account_id)
                .where(Account.sub == sub, Account.status == AccountStatus.ACTIVE, StaffMember.disabled_at.is_(None))
                .with_for_update(of=StaffMember)
            )
        ).first()
        secret = None
        if found is not None:
            staff, email = found
            if staff.totp_confirmed_at is None:
                # Not enrolled yet: a fresh secret at every sign-in, shown to this session only.
                staff_members.new_enrolment(request.config_dict[CIPHER], staff, email)
            row, secret = session.new_session(request, staff.id, stage="totp", address=client_address(request))
            db.add(row)
    if secret is None:
        # The same page for every refusal: it says nothing of the account or why.
        response = _notice(request, _("Not available"), REFUSED, 403, again=False)
    else:
        response = redirect(TOTP, 303)
        session.set_cookie(request, response, secret)
    CONSOLE_LOGIN.clear(request, response, path=session.PATH)
    return response


async def _code_page(request: web.Request, db: AsyncSession, staff: StaffMember, email: str, *, error: str | None, status: int) -> web.Response:
    """The code page; for a staff member still enrolling, with their setup URI (as text)."""
    context: dict[str, object] = {"title": _("Two-factor code"), "error": error}
    if staff.totp_confirmed_at is None:
        context |= {"title": _("Set up two-factor sign-in"), "enrol_uri": staff_members.enrolment_uri(request.config_dict[CIPHER], staff, email)}
    return render(request, "console_totp.html", context, status=status)


async def totp_page(request: web.Request) -> web.StreamResponse:
    async with request.config_dict[DB].begin() as db:
        agent = await session.current(request, db)
        if agent is None:
            return redirect(LOGIN, 303)
        if agent.stage == "active":
            return redirect(HOME, 303)
        staff = await db.get(StaffMember, agent.staff_id)
        assert staff is not None
        return await _code_page(request, db, staff, agent.email, error=None, status=200)


def _ended(request: web.Request, title: str, message: str) -> web.Response:
    response = _notice(request, title, message, 403)
    session.clear_cookie(request, response)
    return response


async def totp_submit(request: web.Request) -> web.StreamResponse:
    form = await forms.checked_form(request)
    code = field(form, "code", 20)
    async with request.config_dict[DB].begin() as db:
        agent = await session.current(request, db)
        if agent is None or agent.stage != "totp":
            return redirect(LOGIN, 303)
        checked = await staff_members.check_code(
            db,
            request.config_dict[CIPHER],
            session_id=agent.session_id,
            staff_id=agent.staff_id,
            sub=agent.sub,
            role=agent.role,
            code=code,
            now=utcnow(),
        )
        if checked.result == "accepted":
            row, secret = session.new_session(request, agent.staff_id, stage="active", address=client_address(request))
            db.add(row)
            response = redirect(HOME, 303)
            session.set_cookie(request, response, secret)
            return response
        if checked.result == "gone":
            return redirect(LOGIN, 303)
        if checked.result == "ended":
            return _ended(request, _("Too many wrong codes"), _("This sign-in has ended. Sign in again."))
        if checked.result == "locked":
            return _ended(request, _("Too many wrong codes"), LOCKED)
        assert checked.staff is not None
        error = _("That code is wrong or was already used. Enter the next code from your app.")
        return await _code_page(request, db, checked.staff, agent.email, error=error, status=400)


async def logout(request: web.Request) -> web.StreamResponse:
    await forms.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        agent = await session.current(request, db)
        if agent is not None:
            await staff_members.sign_out(db, session_id=agent.session_id, sub=agent.sub, signed_in=agent.stage == "active", now=utcnow())
    response = _notice(
        request, _("Signed out of the console"), _("You have signed out of the support console. Your hub account stays signed in."), 200
    )
    session.clear_cookie(request, response)
    return response
