"""Admins manage every staff member at ``/support/admin/staff``: give an existing hub account any
role (agent, supervisor, admin, service_owner), change a role, disable one, and name the services
a service owner looks after. As at ``/support/agents``, no password is typed and no TOTP URI
shown (the new staff member enrols their own authenticator at their first sign-in), and nobody
changes or disables their own staff account. Every look and change writes an audit record in its
transaction (``support.staff_view``, ``staff.added``, ``staff.role_changed``, ``staff.disabled``,
``staff.services_set``)."""

from __future__ import annotations

from aiohttp import web

from identity import admin
from identity.appkeys import CIPHER, DB
from identity.pages.common import field
from identity.support import audit, forms
from identity.support import services as listed
from identity.support import staff as staff_members
from identity.support.app import require_admin
from identity.support.render import render
from identity.support.session import Agent
from identity.support.words import _
from identity.web.responses import redirect

PAGE = "/support/admin/staff"


def add_routes(console: web.Application) -> None:
    r = console.router
    r.add_get("/admin/staff", staff_page)
    r.add_post("/admin/staff", add_staff)
    r.add_post("/admin/staff/{sub}/role", change_role)
    r.add_post("/admin/staff/{sub}/disable", disable_staff)
    r.add_post("/admin/staff/{sub}/services", set_services)


async def _page(request: web.Request, agent: Agent, *, error: str | None = None, status: int = 200, **extra: object) -> web.Response:
    async with request.config_dict[DB].begin() as db:
        staff = await staff_members.listing(db)
        owned = await listed.owned(db)
        ids = await staff_members.ids_by_sub(db)
        services = [s.client_id for s in await listed.visible(db, agent)]
        audit.record(db, actor_kind="agent", actor=agent.sub, action="support.staff_view")
    for member in staff:
        member["services"] = owned.get(ids.get(member["sub"], -1), [])
    context = {"title": _("Staff"), "staff": staff, "roles": staff_members.ROLES, "services": services, "error": error, **extra}
    return render(request, "admin_staff.html", context, status=status)


def _public(exc: admin.InvalidInput) -> str:
    return str(exc).replace("--", "")


def _not_self(agent: Agent, sub: str) -> None:
    if agent.sub == sub:
        raise web.HTTPForbidden(text=_("You cannot change or disable your own staff account; ask another admin."))


async def staff_page(request: web.Request) -> web.StreamResponse:
    return await _page(request, require_admin(request))


async def add_staff(request: web.Request) -> web.StreamResponse:
    agent = require_admin(request)
    form = await forms.checked_form(request)
    email, role = field(form, "email", 320), field(form, "role", 16)
    try:
        async with request.config_dict[DB].begin() as db:
            sub, _address = await staff_members.grant_role(db, request.config_dict[CIPHER], email=email, role=role, created_by=agent.sub)
            audit.record(db, actor_kind="agent", actor=agent.sub, action="staff.added", account_sub=sub, detail={"role": role})
    except admin.InvalidInput as exc:
        return await _page(request, agent, error=_public(exc), status=400, email=email, role=role)
    return redirect(PAGE, 303)


async def change_role(request: web.Request) -> web.StreamResponse:
    agent = require_admin(request)
    form = await forms.checked_form(request)
    sub, role = request.match_info["sub"], field(form, "role", 16)
    _not_self(agent, sub)
    try:
        async with request.config_dict[DB].begin() as db:
            await staff_members.change_role(db, role, sub=sub)
            audit.record(db, actor_kind="agent", actor=agent.sub, action="staff.role_changed", account_sub=sub, detail={"role": role})
    except admin.InvalidInput as exc:
        return await _page(request, agent, error=_public(exc), status=400)
    return redirect(PAGE, 303)


async def disable_staff(request: web.Request) -> web.StreamResponse:
    agent = require_admin(request)
    await forms.checked_form(request)
    sub = request.match_info["sub"]
    _not_self(agent, sub)
    try:
        async with request.config_dict[DB].begin() as db:
            await staff_members.disable(db, sub=sub)
            audit.record(db, actor_kind="agent", actor=agent.sub, action="staff.disabled", account_sub=sub)
    except admin.InvalidInput as exc:
        return await _page(request, agent, error=_public(exc), status=400)
    return redirect(PAGE, 303)


async def set_services(request: web.Request) -> web.StreamResponse:
    agent = require_admin(request)
    form = await forms.checked_form(request)
    sub = request.match_info["sub"]
    client_ids = [v[:64] for v in form.getall("client_id", []) if isinstance(v, str) and v]
    try:
        async with request.config_dict[DB].begin() as db:
            now_owned = await listed.set_owned(db, sub=sub, client_ids=client_ids, granted_by=agent.sub)
            audit.record(db, actor_kind="agent", actor=agent.sub, action="staff.services_set", account_sub=sub, detail={"services": now_owned})
    except admin.InvalidInput as exc:
        return await _page(request, agent, error=_public(exc), status=400)
    return redirect(PAGE, 303)
