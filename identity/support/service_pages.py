"""Member services' pages, for admins (every service) and service owners (their own):
``/support/services`` lists them; ``/support/services/{client_id}`` shows one's sync health at a
glance (charts over the last hour or day from the per-minute rollups, the backlog and dead
letters now, the latest resync's progress), its recent deliveries and notices (people by ``sub``
only), and for admins its settings and the age of its secrets. Its dead letters can be queued
again and a resync started there.

A service the staff member may not see answers 404, as one that does not exist, on every URL
(and is recorded as ``support.refused``, :class:`identity.support.app.NotTheirs`).
Every look and every action writes an audit record in its transaction: ``support.services_view``,
``support.service_view``, ``service.redelivered``, ``service.resynced`` (the ``service.*`` ones
also listed by ``onesignin audit list --service``)."""

from __future__ import annotations

from aiohttp import web

from identity import deliveries, rollups
from identity.appkeys import DB, SETTINGS
from identity.db.models import utcnow
from identity.i18n import format_percent
from identity.pages.common import field
from identity.support import audit, charts, forms
from identity.support import services as listed
from identity.support.app import NotTheirs
from identity.support.render import render
from identity.support.session import AGENT
from identity.support.words import _, ngettext
from identity.web.responses import redirect


def _done(what: str, n: int) -> str | None:
    """What the page says after an action (``?done=…&n=…``), in the console's language."""
    if what == "redelivered":
        return ngettext("Queued again: %(num)d dead letter.", "Queued again: %(num)d dead letters.", n)
    if what == "resynced":
        return ngettext("Resync started: %(num)d person queued.", "Resync started: %(num)d people queued.", n)
    if what == "resync-busy":
        return _("The previous resync is still being sent; start another once it is done.")
    if what == "no-channel":
        return _("This service has neither a webhook nor a topic to deliver to.")
    return None


def add_routes(console: web.Application) -> None:
    r = console.router
    r.add_get("/services", services_page)
    r.add_get("/services/{client_id}", service_page)
    r.add_post("/services/{client_id}/redeliver", redeliver)
    r.add_post("/services/{client_id}/resync", resync)


async def services_page(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    async with request.config_dict[DB].begin() as db:
        found = await listed.visible(db, agent)
        summaries = await listed.summaries(db, found)
        audit.record(db, actor_kind="agent", actor=agent.sub, action="support.services_view", detail={"services": [s.client_id for s in found]})
    return render(request, "services.html", {"title": _("Services"), "summaries": summaries})


def _page(client_id: str) -> str:
    return f"/support/services/{client_id}"


async def service_page(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    window_name = request.query.get("window", "hour")
    window = rollups.WINDOWS.get(window_name) or rollups.WINDOWS["hour"]
    now = utcnow()
    async with request.config_dict[DB].begin() as db:
        service = await listed.find(db, agent, request.match_info["client_id"])
        if service is None:
            raise NotTheirs(text=_("No such service."))
        points = await rollups.series(db, service.id, window, now)
        summary = (await listed.summaries(db, [service], now))[0]
        context = {
            "title": service.name,
            "service": service,
            "summary": summary,
            "window": window,
            "window_name": "day" if window is rollups.WINDOWS["day"] else "hour",
            "charts": charts.health_charts(points),
            "hour": _totals(points[-60:] if window.step.total_seconds() == 60 else points[-4:]),
            "dead_letters": await listed.dead_letters(db, service),
            "deliveries": await listed.recent_deliveries(db, service),
            "notices": await listed.recent_notices(db, service),
            "resync": await deliveries.resync_progress(db, service),
            "settings": listed.settings_of(service) if agent.is_admin else None,
        }
        audit.record(db, actor_kind="agent", actor=agent.sub, action="support.service_view", detail={"client_id": service.client_id, "window": context["window_name"]})
    n = request.query.get("n", "")
    if done := _done(request.query.get("done", ""), int(n) if n.isascii() and n.isdigit() and len(n) < 10 else 0):
        context["done"] = done
    return render(request, "service.html", context)


def _totals(points: list[rollups.Point]) -> dict[str, object]:
    """The last hour's figures, beside the charts (the failure rate written the language's way)."""
    ok, failed, dead = (sum(getattr(p, name) for p in points) for name in ("ok", "failed", "dead"))
    tried = ok + failed
    # Translators: the failure rate when nothing was tried in the last hour.
    return {"ok": ok, "failed": failed, "dead": dead, "rate": format_percent(failed / tried, decimals=1) if tried else _("none tried")}


async def redeliver(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    form = await forms.checked_form(request)
    kind = field(form, "kind", 16) or None
    letter = field(form, "id", 19)
    letter_id = int(letter) if letter.isascii() and letter.isdigit() else None
    if kind not in (None, "delivery", "notice") or (letter_id is None) != (kind is None):
        raise web.HTTPBadRequest(text=_("Say which dead letter, or none for all of them."))
    async with request.config_dict[DB].begin() as db:
        service = await listed.find(db, agent, request.match_info["client_id"])
        if service is None:
            raise NotTheirs(text=_("No such service."))
        count = await listed.redeliver(db, service, kind=kind, letter_id=letter_id)
        audit.record(
            db, actor_kind="agent", actor=agent.sub, action="service.redelivered",
            detail={"client_id": service.client_id, "kind": kind or "all", "id": letter_id, "count": count},
        )
    return redirect(f"{_page(service.client_id)}?done=redelivered&n={count}", 303)


async def resync(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    await forms.checked_form(request)
    async with request.config_dict[DB].begin() as db:
        service = await listed.find(db, agent, request.match_info["client_id"])
        if service is None:
            raise NotTheirs(text=_("No such service."))
        if not deliveries.channels_of(service.webhook_url, service.topic_enabled):
            return redirect(f"{_page(service.client_id)}?done=no-channel", 303)
        try:
            people = await deliveries.resync(db, service, rate=request.config_dict[SETTINGS].sync_resync_rate, started_by=agent.sub)
        except deliveries.ResyncInProgress:
            people = None
        audit.record(
            db, actor_kind="agent", actor=agent.sub, action="service.resynced",
            detail={"client_id": service.client_id, "people": people, "refused": people is None},
        )
    if people is None:
        return redirect(f"{_page(service.client_id)}?done=resync-busy", 303)
    return redirect(f"{_page(service.client_id)}?done=resynced&n={people}", 303)
