"""``GET`` and ``PATCH /api/v1/me``: a member service reads and changes the basic details of the
person whose access token it holds, within the scopes the person granted it.

``PATCH`` takes a JSON object of claims (merge-patch style: a claim present is set, ``null``
clears it). The change is saved with the service as its origin and reaches every other linked
service through sync. ``If-Match`` with the version (as the ``ETag`` of ``GET`` gives it) turns a
lost update into ``412 Precondition Failed``."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import select

from identity.accounts.children import ChildPolicy, OnlyThePerson
from identity.accounts.claims import granted_claims
from identity.accounts.store import EmailTaken, change_at_once, update_details
from identity.api.bearer import NO_STORE, Refused, caller, problem
from identity.api.spec import operation
from identity.appkeys import DB, SETTINGS
from identity.db.engine import autocommit
from identity.db.models import Account
from identity.oidc.scopes import SCOPE_CLAIMS, split
from schemas.account import BasicDetailsUpdate, problems
from schemas.api import ProfileResponse

MAX_BODY = 16 * 1024
_ETAG = re.compile(r'^\s*"?([0-9]{1,12})"?\s*$')
#: The scope a claim belongs to (who may change it).
CLAIM_SCOPE = {claim: scope for scope, claims in SCOPE_CLAIMS.items() for claim in claims if scope != "openid"}


def _answer(account: Account, scope: str, status: int = 200) -> web.Response:
    body = ProfileResponse(sub=account.sub, version=account.version, profile=granted_claims(account, scope))
    return web.Response(
        text=body.model_dump_json(),
        status=status,
        content_type="application/json",
        headers={"ETag": f'"{account.version}"', **NO_STORE},
    )


@operation(
    "Read the person's profile",
    tag="profile",
    auth="person",
    scopes=("openid",),
    responses={200: ProfileResponse},
    headers={200: {"ETag": 'The profile\'s version, e.g. "7" (send it back in If-Match).'}},
)
async def get_me(request: web.Request) -> web.StreamResponse:
    """The basic details of the person whose access token this is, limited to the claims of the
    scopes they granted the calling service."""
    async with request.config_dict[DB]() as db:
        try:
            who = await caller(request, db, person=True)
        except Refused as refused:
            return refused.response
        assert who.account is not None
        return _answer(who.account, who.scope)


@operation(
    "Change the person's basic details",
    tag="profile",
    auth="person",
    scopes=("openid",),
    body=BasicDetailsUpdate,
    responses={200: ProfileResponse, 403: None, 412: None},
    headers={200: {"ETag": "The new version."}, 412: {"ETag": "The current version."}},
    request_headers={"If-Match": 'The version the change is based on, e.g. "7": a newer one gives 412.'},
)
async def patch_me(request: web.Request) -> web.StreamResponse:
    """Merge-patch style: a claim present is set, null clears it. Each claim needs the scope it
    belongs to (403 otherwise). The email address is refused here (422): the person changes it
    at the hub, behind their password. The change reaches every other linked service by sync."""
    # Who is asking comes first: a caller without a valid token learns nothing about the body.
    async with autocommit(request.config_dict[DB]) as db:
        try:
            who = await caller(request, db, person=True)
        except Refused as refused:
            return refused.response
    assert who.account is not None
    if request.content_type not in ("application/json", "application/merge-patch+json"):
        return problem(415, "unsupported_media_type", "Send the changes as a JSON object (Content-Type: application/json).")
    if (request.content_length or 0) > MAX_BODY:
        return problem(413, "request_too_large", f"The body must be at most {MAX_BODY} bytes.")
    raw = await request.read()  # the whole body (the app's client_max_size bounds it)
    if len(raw) > MAX_BODY:
        return problem(413, "request_too_large", f"The body must be at most {MAX_BODY} bytes.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return problem(400, "invalid_json", "The body is not valid JSON.")
    if not isinstance(body, dict) or not body:
        return problem(400, "invalid_request", "The body must be a JSON object with at least one claim to change.")
    if_match = request.headers.get("If-Match")
    expected = None
    if if_match is not None and if_match.strip() != "*":
        found = _ETAG.match(if_match)
        if not found:
            return problem(400, "invalid_request", 'If-Match must be the profile\'s ETag, e.g. "7".')
        expected = int(found.group(1))
    if "email" in body:
        return _unprocessable(
            [{"field": "email", "message": "The email address can only be changed by the person on their account page at the hub, where they confirm their password."}]
        )
    try:
        update = BasicDetailsUpdate.model_validate(body)
    except ValidationError as exc:
        return _unprocessable([p.model_dump() for p in problems(exc)])
    changes = update.changes()
    missing = sorted({CLAIM_SCOPE[c] for c in changes if CLAIM_SCOPE.get(c) not in split(who.scope)})
    if missing:
        return _insufficient(missing)

    # Most changes are one statement that commits on its own, made to the account as the
    # token's check read it; one that another change overtook, or that needs more, is made in a
    # transaction that locks and reads the row first.
    sessions = request.config_dict[DB]
    account = who.account
    client_id = who.client.client_id
    children = ChildPolicy.of(request.config_dict[SETTINGS])
    if expected is None or expected == account.version:
        try:
            changed = await change_at_once(
                sessions, account, changes, channel="service", actor=client_id, client_id=client_id, children=children, shared_only=True
            )
        except OnlyThePerson as refused:
            return _unprocessable([{"field": refused.field, "message": refused.public}])
        if changed is not None:
            return _answer(account, who.scope)
    async with sessions.begin() as db:
        account = await db.scalar(
            select(Account).where(Account.id == who.account.id).with_for_update().execution_options(populate_existing=True)
        )
        if account is None or not account.may_be_shared:
            return problem(401, "invalid_token", "The access token is not valid for this person.")
        if expected is not None and expected != account.version:
            response = problem(
                412, "precondition_failed", f"The profile changed since version {expected}; it is now at version {account.version}.",
                version=account.version,
            )
            response.headers["ETag"] = f'"{account.version}"'
            return response
        try:
            await update_details(db, account, changes, channel="service", actor=client_id, client_id=client_id, children=children)
        except EmailTaken:  # pragma: no cover - email changes are refused above
            return _unprocessable([{"field": "email", "message": "That address cannot be used."}])
        except OnlyThePerson as refused:
            return _unprocessable([{"field": refused.field, "message": refused.public}])
    return _answer(account, who.scope)


def _unprocessable(found: list[dict[str, Any]]) -> web.Response:
    return problem(422, "invalid_profile", "Some claims are not valid; see problems.", problems=found)


def _insufficient(scopes: list[str]) -> web.Response:
    response = problem(
        403, "insufficient_scope", f"Changing these claims needs the scope(s): {' '.join(scopes)}.", scope=" ".join(scopes)
    )
    response.headers["WWW-Authenticate"] = f'Bearer error="insufficient_scope", scope="{" ".join(scopes)}"'
    return response
