"""Supervisors manage staff at ``/support/agents``: list them, add one (its TOTP URI is shown on
that one page, once), change a role, disable one. Every change writes an audit record in the same
transaction. Nobody sees a password hash or a TOTP secret here; a supervisor cannot change or
disable their own staff account (another supervisor, or the CLI, does that)."""

from __future__ import annotations

from aiohttp import web

from identity import admin
from identity.pages.common import field, hash_password, verify_password
from identity.support import audit
from identity.support import staff as staff_members
from identity.support.app import require_supervisor
from identity.support.render import render
from identity.support.session import Agent
from identity.web import csrf
from identity.web.appkeys import CIPHER, DB, HASHER, SETTINGS
from identity.web.responses import redirect

PAGE = "/support/agents"


def add_routes(console: web.Application) -> None:
    r = console.router
    r.add_get("/agents", agents_page, name="console_agents")
    r.add_post("/agents", add_agent)
    r.add_post("/agents/{sub}/role", change_role)
    r.add_post("/agents/{sub}/disable", disable_agent)


async def _page(request: web.Request, *, error: str | None = None, status: int = 200, **extra: object) -> web.Response:
    async with request.config_dict[DB].begin() as db:
        staff = await staff_members.listing(db)
    context = {"title": "Agents", "staff": staff, "roles": staff_members.ROLES, "error": error, **extra}
    return render(request, "console_agents.html", context, status=status)


class PooledPasswords:
    """Password hashing on the hub's hashing threads, off the event loop."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.hasher = request.config_dict[HASHER]

    async def hash(self, password: str) -> str:
        return await hash_password(self.request, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        return await verify_password(self.request, stored_hash, password)


def _public(exc: admin.InvalidInput) -> str:
    """An operator message without the CLI's option names."""
    return str(exc).replace("--", "")


async def agents_page(request: web.Request) -> web.StreamResponse:
    require_supervisor(request)
    return await _page(request)


async def add_agent(request: web.Request) -> web.StreamResponse:
    supervisor = require_supervisor(request)
    form = await csrf.checked_form(request)
    email, password, role = field(form, "email", 320), field(form, "password", 1024), field(form, "role", 16)
    try:
        async with request.config_dict[DB].begin() as db:
            added = await staff_members.add_staff(
                db,
                request.config_dict[SETTINGS],
                PooledPasswords(request),
                request.config_dict[CIPHER],
                email=email,
                password=password,
                role=role,
                created_by=supervisor.sub,
            )
            audit.record(
                db, actor_kind="agent", actor=supervisor.sub, action="staff.added", account_sub=added.sub, detail={"role": added.role}
            )
    except admin.InvalidInput as exc:
        return await _page(request, error=_public(exc), status=400, email=email, role=role)
    context = {"title": "Agent added", "added": added}
    return render(request, "console_agent_added.html", context, status=201)


def _not_self(supervisor: Agent, sub: str) -> None:
    if supervisor.sub == sub:
        raise web.HTTPForbidden(text="You cannot change or disable your own staff account; ask another supervisor.")


async def change_role(request: web.Request) -> web.StreamResponse:
    supervisor = require_supervisor(request)
    form = await csrf.checked_form(request)
    sub, role = request.match_info["sub"], field(form, "role", 16)
    _not_self(supervisor, sub)
    try:
        async with request.config_dict[DB].begin() as db:
            await staff_members.change_role(db, role, sub=sub)
            audit.record(db, actor_kind="agent", actor=supervisor.sub, action="staff.role_changed", account_sub=sub, detail={"role": role})
    except admin.InvalidInput as exc:
        return await _page(request, error=_public(exc), status=400)
    return redirect(PAGE, 303)


async def disable_agent(request: web.Request) -> web.StreamResponse:
    supervisor = require_supervisor(request)
    await csrf.checked_form(request)
    sub = request.match_info["sub"]
    _not_self(supervisor, sub)
    try:
        async with request.config_dict[DB].begin() as db:
            await staff_members.disable(db, sub=sub)
            audit.record(db, actor_kind="agent", actor=supervisor.sub, action="staff.disabled", account_sub=sub)
    except admin.InvalidInput as exc:
        return await _page(request, error=_public(exc), status=400)
    return redirect(PAGE, 303)
