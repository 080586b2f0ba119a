"""Every URL of the support console (relative to ``/support``), in one place."""

from __future__ import annotations

from aiohttp import web

from identity.support import actions, admin_staff, agents, audit_pages, people, recovery_pages, search_page, service_pages, sign_in


def add_routes(console: web.Application) -> None:
    sign_in.add_routes(console)  # /login /callback /totp /logout
    agents.add_routes(console)  # /agents (supervisors)
    service_pages.add_routes(console)  # /services (admins: every service; service owners: theirs)
    admin_staff.add_routes(console)  # /admin/staff (admins)
    r = console.router
    # Search, a person's linked profile, and what an agent may do for them.
    r.add_get("/", search_page.search_page)
    r.add_get("/people/{sub}", people.person_page)
    r.add_post("/people/{sub}/reveal", people.reveal)
    r.add_post("/people/{sub}/edit", actions.edit)
    r.add_post("/people/{sub}/resend-verification", actions.resend_verification)
    r.add_post("/people/{sub}/rights-requests", actions.open_rights_request)
    r.add_post("/people/{sub}/resync", actions.resync)
    r.add_post("/people/{sub}/password-reset", recovery_pages.send_reset)
    r.add_post("/people/{sub}/second-factor-removal", recovery_pages.request_removal)
    # Supervisors only.
    r.add_get("/audit", audit_pages.audit_page)
    r.add_get("/second-factor-removals", recovery_pages.removals_page)
    r.add_post("/second-factor-removals/{id}/approve", recovery_pages.approve)
    r.add_post("/second-factor-removals/{id}/refuse", recovery_pages.refuse)
