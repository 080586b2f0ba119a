"""The console's home, ``/support/?q=``: find a person by email (exact or prefix), name, phone
number or ``sub``. Each search is audited (``support.search``) with the kind of query and the
number of results and the ``sub`` of each person listed, never the text searched for."""

from __future__ import annotations

from aiohttp import web

from identity.support.words import _
from identity.appkeys import DB
from identity.support import audit, search
from identity.support.render import render
from identity.support.session import AGENT

LIMIT = 25


async def search_page(request: web.Request) -> web.StreamResponse:
    agent = request[AGENT]
    query = " ".join(request.query.get("q", "")[: search.MAX_QUERY].split())
    context: dict[str, object] = {"q": query, "title": _("Search")}
    if query:
        async with request.config_dict[DB].begin() as db:
            found = await search.find(db, query, limit=LIMIT)
            audit.record(
                db, actor_kind="agent", actor=agent.sub, action="support.search", detail={"kind": found.kind, "results": len(found.rows), "subs": [row.sub for row in found.rows]},
            )
        context |= {"kind": found.kind, "rows": found.rows, "limit": LIMIT}
    return render(request, "search.html", context)
