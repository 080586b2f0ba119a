"""``GET /api/v1/me/export``: the person's access and portability export, for an app acting
for the person with a token that carries the ``export`` scope.

The export names every service the person uses and their sign-in history, which no ordinary
member service may learn (a service never hears of another). So ``openid`` is not enough: the
token needs the dedicated ``export`` scope, which is in no service's default scopes: only a
client the operator registered with it (``services add --scope "openid export"``, an app of the
group's own) can ask for it, and the person approves it on the consent page by name."""

from __future__ import annotations

from aiohttp import web

from identity.accounts import export
from identity.api.bearer import NO_STORE, Refused, caller, problem
from identity.api.spec import operation
from identity.appkeys import DB
from identity.oidc.scopes import split
from schemas.export import AccountExport

SCOPE = "export"


@operation(
    "Export everything the hub holds about the person",
    tag="privacy",
    auth="person",
    scopes=("openid", SCOPE),
    responses={200: AccountExport, 403: None},
    headers={200: {"Content-Disposition": "attachment; filename=onesignin-export.json"}},
)
async def get_export(request: web.Request) -> web.StreamResponse:
    """The person's whole record at the hub (``schemas/account.export.json``): details, marketing
    choices with their times, consents, links, rights requests, sign-in and change history,
    sessions, grants, what was sent to which service, and the audit records naming the account.
    Needs the ``export`` scope (403 ``insufficient_scope`` otherwise)."""
    async with request.config_dict[DB]() as db:
        try:
            who = await caller(request, db, person=True)
        except Refused as refused:
            return refused.response
        if SCOPE not in split(who.scope):
            response = problem(403, "insufficient_scope", "The export needs the export scope.", scope=SCOPE)
            response.headers["WWW-Authenticate"] = f'Bearer error="insufficient_scope", scope="{SCOPE}"'
            return response
        assert who.account is not None
        body = await export.build(db, who.account)
    return download(body)


def download(body: AccountExport) -> web.Response:
    """The export as a JSON file download, never cached."""
    return web.Response(
        text=body.model_dump_json(indent=2),
        content_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="onesignin-export.json"', **NO_STORE, "Pragma": "no-cache"},
    )
