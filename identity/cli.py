"""The ``onesignin`` command. Each command prints one JSON object on stdout; errors go to stderr
with a non-zero exit status."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
from urllib.parse import urlsplit
from collections.abc import Awaitable, Callable
from typing import Any

from identity import admin
from identity.accounts.passwords import PasswordHasher
from identity.db.engine import create_engine, create_sessionmaker
from identity.db.migrate import upgrade
from identity.mail import MailError, mailer_for
from identity.settings import (
    ConfigurationError,
    Settings,
    development_warnings,
    load_settings,
)


class UsageError(Exception):
    """A bad argument, explained for the person who typed it."""


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _with_db(settings: Settings, work: Callable[[Any], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    engine = create_engine(settings)
    try:
        if settings.is_embedded:
            await upgrade(engine)
        async with create_sessionmaker(engine).begin() as db:
            return await work(db)
    except admin.InvalidInput as exc:
        raise UsageError(str(exc)) from None
    finally:
        await engine.dispose()


def cmd_services_add(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    async def work(db: Any) -> dict[str, Any]:
        service = await admin.add_service(
            db,
            name=args.name,
            redirect_uris=args.redirect_uri,
            post_logout_redirect_uris=args.post_logout_redirect_uri,
            backchannel_logout_uri=args.backchannel_logout_uri,
            scope=args.scope,
            id_token_alg=args.id_token_alg,
        )
        return {"client_id": service.client_id, "client_secret": service.client_secret}

    return asyncio.run(_with_db(settings, work))


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if args.password_stdin:
        args.password = sys.stdin.readline().rstrip("\r\n")
    hasher = PasswordHasher(
        memory_cost=settings.argon2_memory_cost, time_cost=settings.argon2_time_cost, parallelism=settings.argon2_parallelism
    )

    async def work(db: Any) -> dict[str, Any]:
        account = await admin.add_user(
            db,
            settings,
            hasher,
            email=args.email,
            password=args.password,
            given_name=args.given_name,
            family_name=args.family_name,
            birthdate=args.birthdate,
            guardian_email=args.guardian_email,
            verified=args.verified,
        )
        return {"sub": account.sub, "_mail": account.mail}

    result = asyncio.run(_with_db(settings, work))
    mail = result.pop("_mail")
    if mail:
        try:
            asyncio.run(_send(settings, mail))
        except MailError as exc:
            raise UsageError(f"the account {result['sub']} was created, but the guardian's consent mail failed: {exc}") from None
        result["guardian_consent"] = "requested"
    return result


async def _send(settings: Settings, messages: list[Any]) -> None:
    mailer = mailer_for(settings)
    for message in messages:
        await mailer.send(message)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        engine = create_engine(settings)
        try:
            return {"revision": await upgrade(engine)}
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is available (it roughly halves the event loop's own cost)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from aiohttp import web

    from identity.web.app import create_app

    log = logging.getLogger("onesignin")
    for warning in development_warnings(settings):
        log.warning(warning)
    issuer_port = urlsplit(settings.issuer).port or (443 if settings.issuer.startswith("https") else 80)
    if settings.issuer.startswith("http://") and issuer_port != args.port:
        log.warning(
            "ONESIGNIN_ISSUER is %s but the hub listens on port %s: set ONESIGNIN_ISSUER=http://%s:%s "
            "so that services can reach the URLs it publishes.",
            settings.issuer, args.port, args.host, args.port,
        )
    app = create_app(settings)
    _emit({"status": "starting", "url": f"http://{args.host}:{args.port}", "issuer": settings.issuer})
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True, loop=_event_loop())
    return {"status": "stopped"}


def _date(value: str) -> str:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError("use the form YYYY-MM-DD") from None
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="onesignin",
        description="One Sign In: the identity hub. Configure with ONESIGNIN_* environment variables (see README).",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the hub (provider, pages) in this process", description="Run the hub.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations", description="Apply database migrations.")
    migrate.set_defaults(func=cmd_migrate)

    services = sub.add_parser("services", help="manage member services (OAuth clients)", description="Manage member services.")
    services_sub = services.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_service = services_sub.add_parser("add", help="register a member service", description="Register a member service; prints its client_id and client_secret (shown once).")
    add_service.add_argument("--name", required=True, help="the service's name, shown to people")
    add_service.add_argument("--redirect-uri", action="append", required=True, help="an exact redirect URI (repeatable)")
    add_service.add_argument("--post-logout-redirect-uri", action="append", help="where RP-initiated logout may return (repeatable)")
    add_service.add_argument("--backchannel-logout-uri", help="where logout tokens are POSTed")
    add_service.add_argument("--scope", default=admin.DEFAULT_SERVICE_SCOPE, help=f"scopes the service may ask for (default: {admin.DEFAULT_SERVICE_SCOPE})")
    add_service.add_argument("--id-token-alg", choices=["RS256", "ES256"], default="RS256", help="ID token signing algorithm")
    add_service.set_defaults(func=cmd_services_add)

    users = sub.add_parser("users", help="manage people's accounts", description="Manage people's accounts.")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_user = users_sub.add_parser("add", help="create an account", description="Create an account; prints its sub.")
    add_user.add_argument("--email", required=True)
    secret = add_user.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password", help="checked against the same policy as the web page")
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of standard input (keeps it out of ps and shell history)"
    )
    add_user.add_argument("--given-name")
    add_user.add_argument("--family-name")
    add_user.add_argument("--birthdate", type=_date, help="YYYY-MM-DD")
    add_user.add_argument("--guardian-email", help="required when the person is a child")
    add_user.add_argument("--verified", action="store_true", help="mark the email address as verified")
    add_user.set_defaults(func=cmd_users_add)
    return top


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
        result = args.func(settings, args)
    except ConfigurationError as exc:
        print(f"onesignin: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"onesignin: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.command != "serve":
        _emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
