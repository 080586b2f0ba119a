"""The operators' commands of ``onesignin services`` and ``onesignin users``: list, show,
disable, enable, remove, rotate-secret; list, show, disable, enable, unlock, end-sessions.

Each prints a few readable lines by default and one JSON object with ``--json`` (for scripts).
Every change is audited (``onesignin audit list``) in the transaction that makes it; back-channel
logout notices go out once it has committed."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from typing import Any

from identity.admin import InvalidInput
from identity.db.engine import create_engine, create_sessionmaker
from identity.db.migrate import upgrade
from identity.oidc.keys import load_keys
from identity.oidc.logout import LogoutNotice
from identity.sealing import KeyCipher
from identity.settings import Settings


class OperatorError(Exception):
    """A refusal explained for the operator (exit status 2)."""


def _os_user() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


async def _in_unit(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    engine = create_engine(settings)
    try:
        if settings.is_embedded:
            await upgrade(engine)
        async with create_sessionmaker(engine).begin() as db:
            return await work(db)
    except InvalidInput as exc:
        raise OperatorError(str(exc)) from None
    finally:
        await engine.dispose()


async def _keys(db: Any, settings: Settings) -> Any:
    return await load_keys(db, KeyCipher(settings.resolved_secret_key()))


def _send_logouts(settings: Settings, notices: list[LogoutNotice]) -> dict[str, Any]:
    """POST the back-channel logout notices (after the change committed), as the hub would;
    how many were sent, and which services did not acknowledge theirs."""
    if not notices:
        return {"logouts_sent": 0, "logouts_unanswered": []}
    from identity import outbound
    from identity.oidc.logout import send_notices

    async def send() -> dict[str, bool]:
        async with outbound.client(settings, user_agent="OneSignIn") as http:
            return await send_notices(http, notices, settings.backchannel_logout_timeout)

    answered = asyncio.run(send())
    return {"logouts_sent": len(notices), "logouts_unanswered": sorted(c for c, ok in answered.items() if not ok)}


# services --------------------------------------------------------------------------------


def services_list(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import services

    return {"services": asyncio.run(_in_unit(settings, services.listing))}


def services_show(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import services

    return dict(asyncio.run(_in_unit(settings, lambda db: services.show(db, args.client_id))))


def services_disable(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import services

    async def work(db: Any) -> dict[str, Any]:
        return await services.set_disabled(db, args.client_id, args.disable, actor=args.operator, reason=args.reason)

    return dict(asyncio.run(_in_unit(settings, work)))


def services_rotate_secret(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import services

    overlap = settings.client_secret_overlap if args.overlap is None else args.overlap

    async def work(db: Any) -> Any:
        return await services.rotate_secret(db, args.client_id, overlap=overlap, actor=args.operator, reason=args.reason)

    rotated = asyncio.run(_in_unit(settings, work))
    expires = rotated.previous_secret_expires_at
    return {
        "client_id": rotated.client_id,
        "client_secret": rotated.client_secret,
        "previous_secret_expires_at": expires.isoformat() if expires else None,
    }


def services_remove(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import services

    async def work(db: Any) -> Any:
        keys = await _keys(db, settings)
        return await services.remove(db, keys, settings.issuer, args.client_id, force=args.force, actor=args.operator, reason=args.reason)

    removed = asyncio.run(_in_unit(settings, work))
    sent = _send_logouts(settings, removed.logouts)
    return {
        "removed": removed.client_id,
        "name": removed.name,
        "links_ended": removed.links_ended,
        "deliveries_dropped": removed.deliveries_dropped,
        "notices_dropped": removed.notices_dropped,
        "rights_requests_kept": removed.rights_requests_kept,
    } | sent


# users -----------------------------------------------------------------------------------


def users_list(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import accounts

    return {"users": asyncio.run(_in_unit(settings, lambda db: accounts.listing(db, email_prefix=args.email, limit=args.limit)))}


def users_show(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import accounts

    return dict(asyncio.run(_in_unit(settings, lambda db: accounts.show(db, args.sub))))


def users_disable(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import accounts

    async def work(db: Any) -> Any:
        keys = await _keys(db, settings)
        return await accounts.set_disabled(db, keys, settings.issuer, args.sub, args.disable, actor=args.operator, reason=args.reason)

    changed = asyncio.run(_in_unit(settings, work))
    sent = _send_logouts(settings, changed.logouts)
    return changed.summary | (sent if args.disable else {})


def users_unlock(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import accounts

    return dict(asyncio.run(_in_unit(settings, lambda db: accounts.unlock(db, args.sub, actor=args.operator, reason=args.reason))))


def users_end_sessions(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.operations import accounts

    async def work(db: Any) -> Any:
        keys = await _keys(db, settings)
        return await accounts.end_sessions(db, keys, settings.issuer, args.sub, actor=args.operator, reason=args.reason)

    changed = asyncio.run(_in_unit(settings, work))
    sent = _send_logouts(settings, changed.logouts)
    return changed.summary | sent


# human-readable output --------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)\n"
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def _fields(result: dict[str, Any]) -> str:
    lines = []
    for key, value in result.items():
        if isinstance(value, list | dict):
            value = json.dumps(value) if value else "-"
        lines.append(f"{key.replace('_', ' ')}: {'-' if value is None else value}")
    return "\n".join(lines) + "\n"


def render_services(result: dict[str, Any]) -> str:
    return _table(result["services"], ["client_id", "name", "status", "token_endpoint_auth_method", "linked_people"])


def render_users(result: dict[str, Any]) -> str:
    return _table(result["users"], ["sub", "email", "status", "email_verified", "created_at"])


def render_rotated(result: dict[str, Any]) -> str:
    until = result["previous_secret_expires_at"]
    return (
        f"client_id: {result['client_id']}\n"
        f"client_secret: {result['client_secret']}\n"
        "(shown once: give it to the service now)\n"
        + (f"the previous secret keeps working until {until}\n" if until else "the previous secret stopped working\n")
    )


# the parser -------------------------------------------------------------------------------


def _common(cmd: argparse.ArgumentParser, *, change: bool) -> None:
    cmd.add_argument("--json", action="store_true", help="print one JSON object (for scripts) instead of readable lines")
    if change:
        cmd.add_argument("--operator", default=_os_user(), help="who makes the change, for the audit record (default: cli:$USER)")
        cmd.add_argument("--reason", help="why (e.g. a ticket id), for the audit record; no personal data")


def add_service_commands(services_sub: Any) -> None:
    listed = services_sub.add_parser(
        "list", help="list registered services", description="List registered services: client_id, name, status, how they authenticate, how many people are linked."
    )
    _common(listed, change=False)
    listed.set_defaults(func=services_list, render=render_services)

    show = services_sub.add_parser(
        "show", help="show one service", description="Show one service's registration and state (never its secrets): redirect URIs, scopes, sync, links by status, what waits to be delivered."
    )
    show.add_argument("--client-id", required=True)
    _common(show, change=False)
    show.set_defaults(func=services_show, render=_fields)

    for name, text in (
        ("disable", "Disable a service: people cannot sign in to it (the authorization endpoint answers unauthorized_client), "
         "its client authentication fails (invalid_client: token, client_credentials, introspection, revocation, PAR) and "
         "its tokens are refused, until it is enabled again. Links, consents and queued deliveries stay. Takes effect "
         "in a running hub within 5 seconds. Audited."),
        ("enable", "Enable a disabled service again (its unexpired tokens work again). Audited."),
    ):
        cmd = services_sub.add_parser(name, help=text.split(":")[0].split(" (")[0].lower(), description=text)
        cmd.add_argument("--client-id", required=True)
        _common(cmd, change=True)
        cmd.set_defaults(func=services_disable, render=_fields, disable=name == "disable")

    rotate = services_sub.add_parser(
        "rotate-secret",
        help="give a service a new client secret (the old one keeps working for an overlap)",
        description="Make a new client secret for a service authenticating with one (printed once; only its digest is "
        "kept). The current secret keeps working beside it for the overlap (--overlap, default "
        "ONESIGNIN_CLIENT_SECRET_OVERLAP, 86400 s), its digest kept with that expiry; a secret still overlapping from "
        "an earlier rotation stops at once. Audited.",
    )
    rotate.add_argument("--client-id", required=True)
    rotate.add_argument("--overlap", type=int, metavar="SECONDS", help="how long the current secret keeps working (0: stop it now)")
    _common(rotate, change=True)
    rotate.set_defaults(func=services_rotate_secret, render=render_rotated)

    remove = services_sub.add_parser(
        "remove",
        help="remove a service (refused while people are linked, unless --force)",
        description="Remove a service and what the hub keeps for it. Refused while people are linked to it unless "
        "--force: then each active link ends as when the person unlinks the service at the hub (their tokens and "
        "consent revoked, their hub sessions logged out of it by back-channel logout, the deliveries and notices "
        "waiting for it dropped), and the service's rows go with it. Refused while a rights request to it is open; "
        "its closed ones are kept, naming it, for ONESIGNIN_RIGHTS_REQUEST_RETENTION_DAYS like any closed request. "
        "Consider `services disable` instead. Audited.",
    )
    remove.add_argument("--client-id", required=True)
    remove.add_argument("--force", action="store_true", help="end the links of the people linked to it, and remove it")
    _common(remove, change=True)
    remove.set_defaults(func=services_remove, render=_fields)


def add_user_commands(users_sub: Any) -> None:
    listed = users_sub.add_parser("list", help="list accounts", description="List accounts by email address: sub, email, status, whether the address is confirmed.")
    listed.add_argument("--email", metavar="PREFIX", help="only addresses starting with PREFIX")
    listed.add_argument("--limit", type=int, default=100, help="at most this many (default 100, at most 1000)")
    _common(listed, change=False)
    listed.set_defaults(func=users_list, render=render_users)

    show = users_sub.add_parser(
        "show", help="show one account", description="Show one account: status, live sessions, two-step sign-in, lockout, linked services."
    )
    show.add_argument("--sub", required=True, help="the account's sub")
    _common(show, change=False)
    show.set_defaults(func=users_show, render=_fields)

    for name, func, text in (
        ("disable", users_disable, "Disable an account: it cannot sign in, and every session ends and every token is "
         "revoked as with `users end-sessions`. Its data and links stay. Audited."),
        ("enable", users_disable, "Enable a disabled account again (the person signs in again). Audited."),
        ("unlock", users_unlock, "Lift the waits that failed passwords or two-step codes put on the account's address. Audited."),
        ("end-sessions", users_end_sessions, "Sign the person out everywhere, as their account page's \"Sign out "
         "everywhere\" does: every hub session ends, each service it signed in to is told by back-channel logout, "
         "and every token of the account (refresh tokens too) is revoked. Audited."),
    ):
        cmd = users_sub.add_parser(name, help=text.split(":")[0].split(" (")[0].split(". ")[0].lower(), description=text)
        cmd.add_argument("--sub", required=True, help="the account's sub")
        _common(cmd, change=True)
        cmd.set_defaults(func=func, render=_fields, disable=name == "disable")
