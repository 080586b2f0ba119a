"""The console as an aiohttp sub-application, mounted at ``/support``.

Its middleware resolves the console session before any handler runs: a handler under
:data:`OPEN` (sign-in, its callback, the second factor, sign-out) may run without one; every
other one gets ``request[AGENT]``, an active session, or a redirect to sign in (a page) / 401,
and then only on the pages its role opens (:mod:`identity.support.access`; 403 otherwise, and
``/support/`` sends admins and service owners to their own start page).
Handlers needing the supervisor role check it with :func:`require_supervisor` (403 otherwise);
something a staff member may not see answers :class:`NotTheirs` (404, as if it did not exist).
Every such refusal is an audit record, ``support.refused``, in a transaction of its own.
Pages carry strict security headers: a CSP without inline scripts, ``frame-ancestors 'none'``,
``no-referrer`` and ``no-store``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web

from identity.support.words import _
from identity import i18n
from identity.pages import CompiledTemplates
from identity.web import language
from identity.appkeys import DB
from identity.errors import storable
from identity.support import access, audit, session
from identity.support.session import AGENT, Agent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

#: Paths (relative to /support) that run without an active console session.
OPEN = {"/login", "/callback", "/totp", "/logout"}

#: Adds the console's routes to its application (filled by the modules that own them).
Routes = Callable[[web.Application], None]


class NotStaff(web.HTTPForbidden):
    """Signed in, but not a staff member with the needed role."""


class NotTheirs(web.HTTPNotFound):
    """Something the staff member may not see (another's service): answered as if it did not
    exist, and recorded."""


def require_supervisor(request: web.Request) -> Agent:
    agent = request[AGENT]
    if not agent.is_supervisor:
        raise NotStaff(text=_("Only a supervisor may do this."))
    return agent


def require_admin(request: web.Request) -> Agent:
    agent = request[AGENT]
    if not agent.is_admin:
        raise NotStaff(text=_("Only an admin may do this."))
    return agent


@web.middleware
async def strict_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        for name, value in HEADERS.items():
            exc.headers[name] = value
        raise
    for name, value in HEADERS.items():
        response.headers[name] = value
    return response


@web.middleware
async def staff_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    relative = request.path.removeprefix(session.PATH) or "/"
    if relative in OPEN or relative.startswith("/static/"):
        return await handler(request)
    async with request.config_dict[DB].begin() as db:
        agent = await session.current(request, db)
    if agent is None or agent.stage != "active":
        if request.method == "GET":
            raise web.HTTPSeeOther(f"{session.PATH}/login")
        raise web.HTTPUnauthorized(text=_("Your console session has ended. Sign in again."))
    try:
        if not access.allowed(agent.role, relative):
            if relative == "/" and request.method == "GET":
                raise web.HTTPSeeOther(access.home(agent.role))
            raise NotStaff(text=_("Your staff role does not open this page."))
        request[AGENT] = agent
        return await handler(request)
    except (NotStaff, NotTheirs) as refused:
        # Every access control failure is recorded (OWASP ASVS 7.2.2); the handler's own
        # transaction, if it had one, rolled back with the refusal.
        async with request.config_dict[DB].begin() as db:
            audit.record(
                db, actor_kind="agent", actor=agent.sub, action="support.refused",
                detail={"method": request.method, "path": relative[:300] if storable(relative) else "(not storable)", "status": refused.status, "role": agent.role},
            )
        raise


#: The console's environments: its own configuration (the console catalogue), its own cache.
COMPILED = CompiledTemplates()


def create_console(*routes: Routes) -> web.Application:
    console = web.Application(middlewares=[language.console_language, strict_headers, staff_only])
    env = aiohttp_jinja2.setup(
        console,
        loader=jinja2.ChoiceLoader(
            [jinja2.PackageLoader("identity.support", "templates"), jinja2.PackageLoader("identity.pages", "templates")]
        ),
        autoescape=jinja2.select_autoescape(default=True),
        auto_reload=False,
        bytecode_cache=COMPILED,
    )
    i18n.install(env, domain="console")
    for add in routes:
        add(console)
    return console
