"""The console's help for a locked-out person (:mod:`identity.support.recovery`): an agent mails
the person a password-reset link or asks for their second factor to be removed, each with a
reason; supervisors approve or refuse the waiting removals at ``/support/second-factor-removals``."""

from __future__ import annotations

from aiohttp import web

from identity.support.words import _, lazy_gettext
from identity.appkeys import DB, SETTINGS
from identity.db.units import unit
from identity.support import forms, recovery
from identity.support.app import require_supervisor
from identity.support.people import AGENT_REASON_MIN, account_or_404, person_path, read_reason, reason_problem
from identity.support.render import render
from identity.support.session import AGENT
from identity.web import after_commit
from identity.web.responses import redirect

PAGE = "/support/second-factor-removals"

#: Refusals on the approvals page (``?error=``), fixed texts.
ERRORS = {
    "not_pending": lazy_gettext("That request was already decided."),
    "own_request": lazy_gettext("You asked for this removal yourself: another supervisor decides it."),
    "own_account": lazy_gettext("That request is for your own account: another supervisor decides it."),
}
DONE = {
    "approved": lazy_gettext("Approved: the second factor is removed and the person was told."),
    "refused": lazy_gettext("Refused: nothing was removed."),
}


async def _reason(request: web.Request) -> tuple[str, str | None]:
    form = await forms.checked_form(request)
    reason = read_reason(form)
    return reason, reason_problem(reason, minimum=None if request[AGENT].is_supervisor else AGENT_REASON_MIN)


async def send_reset(request: web.Request) -> web.StreamResponse:
    sub = request.match_info["sub"]
    reason, problem = await _reason(request)
    if problem:
        return redirect(person_path(sub, error=problem), 303)
    async with unit(request.config_dict[DB]) as db:
        account = await account_or_404(db, request, acting=True)
        message = await recovery.send_reset(db, request.config_dict[SETTINGS], request[AGENT], account, reason)
        after_commit.mail(db, request, [message])
    return redirect(person_path(sub, done="reset_sent"), 303)


async def request_removal(request: web.Request) -> web.StreamResponse:
    sub = request.match_info["sub"]
    reason, problem = await _reason(request)
    if problem:
        return redirect(person_path(sub, error=problem), 303)
    async with unit(request.config_dict[DB]) as db:
        account = await account_or_404(db, request, acting=True)
        try:
            message = await recovery.request_removal(db, request.config_dict[SETTINGS], request[AGENT], account, reason)
        except recovery.Refused as refused:
            return redirect(person_path(sub, error=refused.key), 303)
        after_commit.mail(db, request, [message])
    return redirect(person_path(sub, done="removal_requested"), 303)


async def removals_page(request: web.Request) -> web.StreamResponse:
    agent = require_supervisor(request)
    async with request.config_dict[DB].begin() as db:
        waiting = await recovery.pending(db)
    rows = [
        {
            "id": r.id,
            "sub": a.sub,
            "email": a.email,
            "reason": r.reason,
            "requested_by": requester or r.requested_by,
            "requested_at": r.requested_at,
            "mine": r.requested_by == agent.sub or a.id == agent.account_id,
        }
        for r, a, requester in waiting
    ]
    context = {
        "title": _("Second-factor removals"),
        "requests": rows,
        "done": DONE.get(request.query.get("done", "")),
        "error": ERRORS.get(request.query.get("error", "")),
    }
    return render(request, "second_factor_removals.html", context)


async def _decide(request: web.Request, *, approve: bool) -> web.StreamResponse:
    agent = require_supervisor(request)
    await forms.checked_form(request)
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise web.HTTPNotFound(text=_("No such request."))
    try:
        async with unit(request.config_dict[DB]) as db:
            message = await recovery.decide(db, request.config_dict[SETTINGS], agent, int(raw), approve=approve)
            if message is not None:
                after_commit.mail(db, request, [message])
    except recovery.Refused as refused:
        return redirect(f"{PAGE}?error={refused.key}", 303)
    return redirect(f"{PAGE}?done={'approved' if approve else 'refused'}", 303)


async def approve(request: web.Request) -> web.StreamResponse:
    return await _decide(request, approve=True)


async def refuse(request: web.Request) -> web.StreamResponse:
    return await _decide(request, approve=False)
