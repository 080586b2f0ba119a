"""An authorization request waiting on the person: to sign in, or to decide on consent (an
*interaction*, as node-oidc-provider names it). The authorization endpoint starts one
(:func:`start`) and resumes from it; the pages read what it asks (:func:`details`) and record
what the person did (:func:`finish_consent`; a sign-in needs no record: the session's
``auth_time`` says it is fresh). The request is stored with the browser binding's digest, which
its cookie (scoped to the interaction's path) must match. Functions take the caller's session
and never commit; they know nothing of HTTP."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Interaction, utcnow
from identity.tokens import digest, new_secret

#: The longest uid :func:`find` looks up.
MAX_UID = 64


@dataclass(frozen=True)
class Decision:
    """What the person decided in an interaction, if anything: signed in since it started
    (``fresh_since``: its start), consented, or denied."""

    fresh_since: dt.datetime | None = None
    consented: bool = False
    denied: bool = False


@dataclass(frozen=True)
class Details:
    """What an interaction asks of the person, for its page."""

    client_id: str
    scope: str
    prompts: frozenset[str]
    max_age: str | None
    started_at: dt.datetime
    acr_values: str | None = None
    #: The languages the service asked the pages to speak, most preferred first (OIDC Core 3.1.2.1).
    ui_locales: str | None = None


def path(uid: str) -> str:
    """Where the interaction's pages are (and its cookie's path)."""
    return f"/i/{uid}"


def needs_sign_in(auth_time: dt.datetime | None, prompts: set[str] | frozenset[str], max_age: str | None, decision: Decision) -> bool:
    """Whether the person must (again) sign in: no session (``auth_time`` None),
    ``prompt=login``, or a session older than ``max_age``, unless they signed in since the
    interaction started."""
    if auth_time is None:
        return True
    fresh = decision.fresh_since is not None and auth_time >= decision.fresh_since
    if "login" in prompts and not fresh:
        return True
    if max_age is not None and re.fullmatch(r"[0-9]{1,10}", max_age):
        age = (utcnow() - auth_time).total_seconds()
        if age > int(max_age) and not fresh:
            return True
    return False


def start(db: AsyncSession, *, query: list[list[str]], client_id: str, scope: str, ttl: int) -> tuple[str, str]:
    """Store an authorization request (its parameters, ``query``) to resume after the person
    acts. Returns its uid (in its path) and the binding secret for the browser's cookie."""
    uid = new_secret(16)
    binding = new_secret()
    now = utcnow()
    db.add(
        Interaction(
            uid_hash=digest(uid),
            params={"uid": uid, "binding": digest(binding), "query": query, "client_id": client_id, "scope": scope},
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )
    )
    return uid, binding


async def find(db: AsyncSession, uid: str, binding: str | None) -> Interaction | None:
    """The interaction named by ``uid``, if it is live and bound to the browser whose cookie
    holds ``binding``."""
    if len(uid) > MAX_UID:
        return None
    row = await db.scalar(select(Interaction).where(Interaction.uid_hash == digest(uid)))
    if row is None or row.expires_at <= utcnow() or not binding or digest(binding) != row.params.get("binding"):
        return None
    return row


def details(interaction: Interaction) -> Details:
    query = dict(interaction.params["query"])
    return Details(
        client_id=interaction.params["client_id"],
        scope=interaction.params["scope"],
        prompts=frozenset(query.get("prompt", "").split()),
        max_age=query.get("max_age"),
        started_at=interaction.created_at,
        acr_values=query.get("acr_values"),
        ui_locales=query.get("ui_locales"),
    )


async def ui_locales(db: AsyncSession, uid: str) -> str | None:
    """The ``ui_locales`` of a live interaction's request, for the language of its pages (and
    of the pages the person passes through on its way, such as the second step). Only the
    languages are read: nothing here needs the browser binding."""
    if len(uid) > MAX_UID:
        return None
    row = await db.scalar(select(Interaction).where(Interaction.uid_hash == digest(uid)))
    if row is None or row.expires_at <= utcnow():
        return None
    return dict(row.params["query"]).get("ui_locales")


def query(interaction: Interaction) -> list[tuple[str, str]]:
    """The stored request's parameters, to run it again."""
    return [(k, v) for k, v in interaction.params["query"]]


def decision(interaction: Interaction) -> Decision:
    """What the person decided so far, for the resumed request."""
    params = interaction.params
    return Decision(fresh_since=interaction.created_at, consented=params.get("consented", False), denied=params.get("denied", False))


def finish_consent(interaction: Interaction, *, allowed: bool) -> None:
    """The person allowed or denied the request."""
    interaction.params = {**interaction.params, "consented": allowed, "denied": not allowed}


def ask_again(interaction: Interaction) -> str:
    """The resumed request needs the person again (to sign in, or consent afresh): what they
    decided no longer holds. Returns the uid, to send them back to its page."""
    interaction.params = {**interaction.params, "consented": False}
    return str(interaction.params["uid"])


async def finish(db: AsyncSession, interaction: Interaction) -> None:
    """The request was answered: the interaction is over."""
    await db.delete(interaction)
