"""Supervisors manage the people's side of the staff at ``/support/agents``: list them, give an
existing hub account the agent or supervisor role, change a role between those two, disable an
agent or supervisor (admins and service owners are an admin's to manage, ``/support/admin/staff``). Every change writes an audit record in the same transaction.
A supervisor types no password and never sees a TOTP URI: the new staff member enrols their own
authenticator at their first console sign-in, so nobody but them holds both factors. Nobody sees
a password hash or a TOTP secret here; a supervisor cannot change or disable their own staff
account (another supervisor, or the CLI, does that)."""

from __future__ import annotations

from aiohttp import web

from identity.support.words import _
from identity import admin
from identity.appkeys import CIPHER, DB
from identity.pages.common import field
from identity.support import access, audit, forms
from identity.support import staff as staff_members
from identity.support.app import require_supervisor
from identity.support.render import render
from identity.support.session import Agent
from identity.web.responses import redirect

PAGE = "/support/agents"
ROLES = tuple(sorted(access.PEOPLE))


def add_routes(console: web.Application) -> None:
    r = console.router
    r.add_get("/agents", agents_page, name="console_agents")
    r.add_post("/agents", add_agent)
    r.add_post("/agents/{sub}/role", change_role)
    r.add_post("/agents/{sub}/disable", disable_agent)


async def _page(request: web.Request, *, error: str | None = None, status: int = 200, **extra: object) -> web.Response:
    async with request.config_dict[DB].begin() as db:
        staff = await staff_members.listing(db)
    staff = [member for member in staff if member["role"] in access.PEOPLE]
    context = {"title": _("Agents"), "staff": staff, "roles": ROLES, "error": error, **extra}
    return render(request, "console_agents.html", context, status=status)


def _public(exc: admin.InvalidInput) -> str:
    """An operator message without the CLI's option names."""
    return str(exc).replace("--", "")


async def agents_page(request: web.Request) -> web.StreamResponse:
    require_supervisor(request)
    return await _page(request)


async def add_agent(request: web.Request) -> web.StreamResponse:
    supervisor = require_supervisor(request)
    form = await forms.checked_form(request)
    email, role = field(form, "email", 320), field(form, "role", 16)
    try:
        async with request.config_dict[DB].begin() as db:
            sub, address = await staff_members.grant_role(db, request.config_dict[CIPHER], email=email, role=role, created_by=supervisor.sub, only_roles=ROLES)
            audit.record(db, actor_kind="agent", actor=supervisor.sub, action="staff.added", account_sub=sub, detail={"role": role})
    except admin.InvalidInput as exc:
        return await _page(request, error=_public(exc), status=400, email=email, role=role)
    context = {"title": _("Agent added"), "added": {"email": address, "role": role}}
    return render(request, "console_agent_added.html", context, status=201)


def _not_self(supervisor: Agent, sub: str) -> None:
    if supervisor.sub == sub:
        raise web.HTTPForbidden(text=_("You cannot change or disable your own staff account; ask another supervisor."))


async def change_role(request: web.Request) -> web.StreamResponse:
    supervisor = require_supervisor(request)
    form = await forms.checked_form(request)
    sub, role = request.match_info["sub"], field(form, "role", 16)
    _not_self(supervisor, sub)
    try:
        async with request.config_dict[DB].begin() as db:
            await staff_members.change_role(db, role, sub=sub, only_roles=ROLES)
            audit.record(db, actor_kind="agent", actor=supervisor.sub, action="staff.role_changed", account_sub=sub, detail={"role": role})
    except admin.InvalidInput as exc:
        return await _page(request, error=_public(exc), status=400)
    return redirect(PAGE, 303)


async def disable_agent(request: web.Request) -> web.StreamResponse:
    supervisor = require_supervisor(request)
    await forms.checked_form(request)
    sub = request.match_info["sub"]
    _not_self(supervisor, sub)
    try:
        async with request.config_dict[DB].begin() as db:
            await staff_members.disable(db, sub=sub, only_roles=ROLES)
            audit.record(db, actor_kind="agent", actor=supervisor.sub, action="staff.disabled", account_sub=sub)
    except admin.InvalidInput as exc:
        return await _page(request, error=_public(exc), status=400)
    return redirect(PAGE, 303)
