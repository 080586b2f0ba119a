"""The audit trail for supervisors, ``/support/audit``: newest first, a page at a time, of every
account or of one (``?account=SUB``). Agents get 403."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from identity.support.words import _
from identity.appkeys import DB
from identity.support import audit, trail
from identity.support.app import require_supervisor
from identity.support.render import render

PAGE = 50


async def audit_page(request: web.Request) -> web.StreamResponse:
    supervisor = require_supervisor(request)
    account = request.query.get("account", "").strip()[:64] or None
    before_text = request.query.get("before", "")
    before = int(before_text) if before_text.isascii() and before_text.isdigit() and len(before_text) < 19 else None
    async with request.config_dict[DB].begin() as db:
        rows = await trail.records(db, account_sub=account, before=before, limit=PAGE + 1)
        # Reading the trail is itself recorded.
        audit.record(db, actor_kind="agent", actor=supervisor.sub, action="support.audit_view", account_sub=account)
        emails = await trail.agent_emails(db, rows)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    older = None
    if more:
        older = "/support/audit?" + urlencode({**({"account": account} if account else {}), "before": rows[-1].id})
    context = {"title": _("Audit trail"), "records": rows, "emails": emails, "account": account or "", "older": older, "paged": before is not None}
    return render(request, "audit.html", context)
