"""The ``onesignin`` command. Each command prints one JSON object on stdout (``audit list``: one
JSON array; the operators' commands of :mod:`identity.operator_cli` readable lines unless
``--json``); errors go to stderr with a non-zero exit status."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from identity import admin, logs, operator_cli, preflight
from identity.accounts.passwords import PasswordHasher, check_password
from identity.accounts.pwned_api import range_api
from identity.db.engine import create_engine, create_sessionmaker
from identity.db.migrate import upgrade
from identity.mail import MailError, mailer_for
from identity.sealing import KeyCipher
from identity.settings import (
    ConfigurationError,
    Settings,
    development_warnings,
    load_settings,
)
from schemas.text import check_multiline
from sync.broker import BrokerError


class UsageError(Exception):
    """A bad argument, explained for the person who typed it."""



#: The support console's staff roles (``identity.support.session.Role``; tests check they agree).
STAFF_ROLES = ["agent", "supervisor", "admin", "service_owner"]

def _emit(payload: dict[str, Any] | list[Any]) -> None:
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


def _scim_arguments(parser: argparse.ArgumentParser, *, removable: bool = False) -> None:
    parser.add_argument(
        "--scim-base-url", metavar="URL",
        help="provision people to the service's SCIM 2.0 server at URL (https://service.example/scim/v2): "
        "Users made on link, patched on change, deactivated on unlink, deleted on erasure",
    )
    parser.add_argument(
        "--scim-token", metavar="TOKEN",
        help="the bearer token the hub presents to the SCIM server (stored sealed, never shown; "
        "'-' reads it from standard input, out of the process list)",
    )
    parser.add_argument(
        "--scim-token-url", metavar="URL",
        help="instead of a fixed token, get one from this OAuth token endpoint (client credentials grant) "
        "as --scim-client-id with --scim-client-secret",
    )
    parser.add_argument("--scim-client-id", metavar="ID", help="the hub's client id at --scim-token-url")
    parser.add_argument(
        "--scim-client-secret", metavar="SECRET",
        help="the hub's client secret at --scim-token-url (stored sealed, never shown; '-' reads it from standard input)",
    )
    if removable:
        parser.add_argument("--remove-scim", action="store_true", help="stop SCIM provisioning (what was queued for it is dropped)")


def _from_stdin(value: str | None) -> str | None:
    return sys.stdin.readline().strip() if value == "-" else value


def _scim_token(args: argparse.Namespace) -> str | None:
    if args.scim_token is not None and args.scim_client_secret is not None:
        raise UsageError("give --scim-token or --scim-client-secret, not both")
    return _from_stdin(args.scim_token)


def cmd_services_add(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    async def work(db: Any) -> dict[str, Any]:
        await admin.refuse_taken_name(db, args.name)
        service = await admin.add_service(
            db,
            name=args.name,
            redirect_uris=args.redirect_uri,
            post_logout_redirect_uris=args.post_logout_redirect_uri,
            backchannel_logout_uri=args.backchannel_logout_uri,
            scope=args.scope,
            id_token_alg=args.id_token_alg,
            webhook_url=args.webhook_url,
            kafka_topic=args.kafka_topic,
            scim_base_url=args.scim_base_url,
            scim_token=token or client_secret,
            scim_token_url=args.scim_token_url,
            scim_client_id=args.scim_client_id,
            cipher=KeyCipher(settings.resolved_secret_key()),
            cancellation_url=args.cancellation_url,
            cancellation_instructions=args.cancellation_instructions,
            token_endpoint_auth_method=args.token_endpoint_auth_method,
            application_type=args.application_type,
            jwks=_jwks_argument(args),
            jwks_uri=args.jwks_uri,
            require_par=args.require_par,
            require_dpop=args.require_dpop,
            require_signed_request_object=args.require_signed_request_object,
        )
        out: dict[str, Any] = {"client_id": service.client_id}
        if service.client_secret is not None:
            out["client_secret"] = service.client_secret
        if args.webhook_url or args.kafka_topic:
            out["webhook_secret"] = service.webhook_secret
            out["topic"] = service.topic
        if args.scim_base_url:
            out["scim_base_url"] = args.scim_base_url.rstrip("/")
        return out

    token = _scim_token(args)
    client_secret = _from_stdin(args.scim_client_secret)
    return asyncio.run(_with_db(settings, work))


def _jwks_argument(args: argparse.Namespace) -> dict[str, Any] | None:
    """The JWK Set given inline (--jwks JSON) or in a file (--jwks-file PATH)."""
    if args.jwks is not None:
        text, where = args.jwks, "--jwks"
    elif args.jwks_file is not None:
        try:
            with open(args.jwks_file, encoding="utf-8") as f:
                text = f.read(admin.MAX_JWKS_FILE + 1)
        except OSError as exc:
            raise UsageError(f"--jwks-file: cannot read {args.jwks_file}: {exc.strerror}") from None
        where = "--jwks-file"
    else:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise UsageError(f"{where} must be a JSON JWK Set") from None
    if not isinstance(value, dict):
        raise UsageError(f'{where} must be a JSON JWK Set ({{"keys": [...]}})')
    return value


def cmd_services_update(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    async def work(db: Any) -> dict[str, Any]:
        result = await admin.update_service_sync(
            db,
            KeyCipher(settings.resolved_secret_key()),
            args.client_id,
            webhook_url=args.webhook_url,
            remove_webhook=args.remove_webhook,
            kafka_topic=args.kafka_topic,
            rotate_secret=args.rotate_webhook_secret,
            scim_base_url=args.scim_base_url,
            scim_token=token,
            scim_token_url=args.scim_token_url,
            scim_client_id=args.scim_client_id,
            scim_client_secret=client_secret,
            remove_scim=args.remove_scim,
        )
        out: dict[str, Any] = {"client_id": result.client_id, "webhook_url": result.webhook_url, "topic": result.topic, "scim_base_url": result.scim_base_url}
        if result.webhook_secret:
            out["webhook_secret"] = result.webhook_secret
        if args.cancellation_url is not None or args.cancellation_instructions is not None:
            service = await admin.update_service_cancellation(
                db, args.client_id, url=args.cancellation_url, instructions=args.cancellation_instructions
            )
            out["cancellation_url"] = service.cancellation_url
            out["cancellation_instructions"] = service.cancellation_instructions
        jwks = _jwks_argument(args)
        client_settings = (
            args.token_endpoint_auth_method, args.application_type, jwks, args.jwks_uri,
            args.require_par, args.require_dpop, args.require_signed_request_object, args.remove_jwks or None,
        )
        if any(v is not None for v in client_settings):
            changed = await admin.update_service_client(
                db,
                args.client_id,
                token_endpoint_auth_method=args.token_endpoint_auth_method,
                application_type=args.application_type,
                jwks=jwks,
                jwks_uri=args.jwks_uri,
                require_par=args.require_par,
                require_dpop=args.require_dpop,
                require_signed_request_object=args.require_signed_request_object,
                remove_keys=args.remove_jwks,
            )
            row = changed.service
            out |= {
                "token_endpoint_auth_method": row.token_endpoint_auth_method,
                "application_type": row.application_type,
                "jwks_uri": row.jwks_uri,
                "require_par": row.require_par,
                "require_dpop": row.require_dpop,
                "require_signed_request_object": row.require_signed_request_object,
            }
            if changed.client_secret is not None:
                out["client_secret"] = changed.client_secret
        return out

    token = _scim_token(args)
    client_secret = _from_stdin(args.scim_client_secret)
    return asyncio.run(_with_db(settings, work))


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity import deliveries as status
    from identity import notices

    async def work(db: Any) -> dict[str, Any]:
        return {
            "dead_letters": await status.dead_letters(db, client_id=args.client_id, limit=args.limit),
            "dead_notices": await notices.dead(db, client_id=args.client_id, limit=args.limit),
        }

    return asyncio.run(_with_db(settings, work))


def cmd_redeliver(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity import deliveries as status
    from identity import notices

    if not args.client_id and not args.id and not args.all and not args.notice:
        raise UsageError("say what to redeliver: --client-id, --id (repeatable), --notice (repeatable) or --all")

    async def work(db: Any) -> dict[str, Any]:
        deliveries = args.client_id or args.id or args.all
        revived = args.client_id or args.notice or args.all
        return {
            "redelivered": await status.redeliver(db, client_id=args.client_id, ids=args.id) if deliveries else 0,
            "notices_redelivered": await notices.revive(db, client_id=args.client_id, ids=args.notice) if revived else 0,
        }

    return asyncio.run(_with_db(settings, work))


def cmd_rights_list(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.rights import RightsError, operators

    state = "overdue" if args.overdue else "all" if args.all else "open"

    async def work(db: Any) -> dict[str, Any]:
        try:
            return await operators.listing(db, state, client_id=args.service, hub_only=args.hub)
        except RightsError as exc:
            raise UsageError(f"no service with client_id {args.service!r}") from exc

    return asyncio.run(_with_db(settings, work))


def cmd_rights_status(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.rights import NotFound, RightsError, operators

    if args.reason is not None:
        try:
            args.reason = check_multiline(args.reason)
        except ValueError as exc:
            raise UsageError(f"--reason: {exc}") from None

    async def work(db: Any) -> dict[str, Any]:
        try:
            return {"request": await operators.answer(db, args.id, status=args.status, reason=args.reason, actor=args.by)}
        except NotFound:
            raise UsageError(f"no rights request with id {args.id!r}") from None
        except RightsError as exc:
            raise UsageError(exc.public) from None

    return asyncio.run(_with_db(settings, work))


def cmd_audit_list(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    from identity.support import trail

    if args.service is not None:
        async def of_service(db: Any) -> dict[str, Any]:
            return {"records": [trail.as_json(r) for r in await trail.of_service(db, args.service)]}

        return list(asyncio.run(_with_db(settings, of_service))["records"])
    if not args.account.strip():
        raise UsageError("--account needs the account's sub")

    async def work(db: Any) -> dict[str, Any]:
        return {"records": [trail.as_json(r) for r in await trail.records(db, account_sub=args.account, limit=None, newest_first=False)]}

    return list(asyncio.run(_with_db(settings, work))["records"])


def _operator() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _run_sync_alone(settings: Settings, args: argparse.Namespace, *, relay: bool, worker: bool) -> dict[str, Any]:
    from aiohttp import web

    from identity.web.app import database
    from sync.runtime import standalone_app

    log = logging.getLogger("onesignin")
    if not settings.kafka_bootstrap_servers:
        raise UsageError(
            "set ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS: a separate relay or worker needs a shared Kafka "
            "(the embedded broker lives inside `onesignin serve`)"
        )
    if settings.is_embedded:
        log.warning("Using the embedded SQLite database; scale-out processes normally share Postgres.")
    _preflight(settings, args.host, args.port)
    role = "relay" if relay else "worker"
    app = standalone_app(settings, database(settings.is_embedded), relay=relay, worker=worker, tracer_provider=_tracing(settings, role))
    _batch_logs_once_serving(app, settings)
    _emit({"status": "starting", "role": role, "metrics": f"http://{args.host}:{args.port}/metrics"})
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True, loop=_event_loop())
    return {"status": "stopped"}


def _preflight(settings: Settings, host: str, port: int, *, metrics: bool = False) -> None:
    """A busy port, an unreachable or unmigrated database: one or two lines saying what to do.
    ``metrics``: the hub's own metrics port is checked too."""
    try:
        preflight.check_port(host, port)
        if metrics and settings.metrics_port:
            preflight.check_port(settings.metrics_host, settings.metrics_port, "--metrics-port (ONESIGNIN_METRICS_PORT)")
        asyncio.run(preflight.check_database(settings))
    except preflight.NotStartable as exc:
        raise UsageError(str(exc)) from None


def cmd_relay(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    return _run_sync_alone(settings, args, relay=True, worker=False)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    return _run_sync_alone(settings, args, relay=False, worker=True)


def _password(args: argparse.Namespace) -> str:
    """The password of ``--password``, or with ``--password-stdin`` the first line of standard input."""
    if not args.password_stdin:
        return str(args.password)
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise UsageError("--password-stdin: standard input held no password (write it as the first line)")
    return line


def _password_arguments(cmd: argparse.ArgumentParser, *, password_help: str) -> None:
    secret = cmd.add_mutually_exclusive_group(required=True)
    secret.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from the first line of standard input (preferred: it stays out of the process list and shell history)",
    )
    secret.add_argument(
        "--password", metavar="P",
        help=f"{password_help}; every user of the machine can read it in the process list while the command runs, "
        "and the shell keeps it in its history: prefer --password-stdin",
    )


def _breached(settings: Settings, password: str) -> bool:
    """Whether the Pwned Passwords API, when the operator enabled it, knows a new password; asked
    before any database work, and only about a password the offline policy accepts."""
    if not settings.breached_password_api or check_password(password) is not None:
        return False

    async def ask() -> bool:
        async with range_api(settings) as api:
            return api is not None and await api.seen(password)

    return asyncio.run(ask())


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    password = _password(args)
    breached = _breached(settings, password)
    hasher = PasswordHasher(
        memory_cost=settings.argon2_memory_cost, time_cost=settings.argon2_time_cost, parallelism=settings.argon2_parallelism
    )

    async def work(db: Any) -> dict[str, Any]:
        account = await admin.add_user(
            db,
            settings,
            hasher,
            email=args.email,
            password=password,
            given_name=args.given_name,
            family_name=args.family_name,
            birthdate=args.birthdate,
            guardian_email=args.guardian_email,
            verified=args.verified,
            breached=breached,
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


def cmd_purge(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity import purge

    async def run() -> dict[str, Any]:
        engine = create_engine(settings)
        try:
            if settings.is_embedded:
                await upgrade(engine)
            return {"purged": await purge.run(create_sessionmaker(engine), settings)}
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_users_erase(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.accounts import erase
    from identity.accounts.store import find_by_sub

    async def work(db: Any) -> dict[str, Any]:
        account = await find_by_sub(db, args.sub)
        if account is None:
            erased = await erase.is_erased(db, args.sub)
            raise UsageError(f"the account {args.sub} was already erased" if erased else f"no account with sub {args.sub!r}")
        try:
            await erase.erase(db, account, keys=None, issuer=settings.issuer, actor_kind="cli", actor=args.operator, reason=args.reason)
        except erase.LinksStillActive as exc:
            why = []
            if exc.services:
                names = ", ".join(f"{s.name} ({s.client_id})" for s in exc.services)
                why.append(f"the person still has an active account at: {names}; it must be cancelled there first")
            if exc.requests:
                listed = ", ".join(f"{r.id} ({r.type} to {r.service_name} ({r.client_id}), {r.status})" for r in exc.requests)
                why.append(f"rights requests to services are still open: {listed}; each service must complete or refuse it first")
            raise UsageError("; and ".join(why)) from None
        return {"erased": args.sub}

    return asyncio.run(_with_db(settings, work))


def cmd_users_remove_second_factor(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.accounts import factors
    from identity.accounts.store import find_by_sub
    from identity.support import audit

    async def work(db: Any) -> dict[str, Any]:
        account = await find_by_sub(db, args.sub)
        if account is None:
            raise UsageError(f"no account with sub {args.sub!r}")
        removed = await factors.remove_all(db, account.id)
        if not removed:
            raise UsageError(f"the account {args.sub} has no second factor")
        detail = {"authenticator_app": removed.authenticator_app, "passkeys": removed.passkeys}
        audit.record(db, actor_kind="cli", actor=args.operator, action="account.second_factor_removed", account_sub=account.sub, reason=args.reason, detail=detail)
        return {"sub": args.sub, "second_factor": "removed", "authenticator_app": removed.authenticator_app, "passkeys_removed": removed.passkeys}

    return asyncio.run(_with_db(settings, work))


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        engine = create_engine(settings)
        try:
            return {"revision": await upgrade(engine)}
        finally:
            await engine.dispose()

    return asyncio.run(run())


#: The cyclic garbage collector's thresholds for long-running processes: a young-generation
#: collection every 50,000 net allocations instead of 700. Requests, deliveries and statements
#: allocate many short-lived objects that reference counting frees anyway; collecting every 700
#: cost the sync processes a tenth to a third of their CPU per delivery (bench/bench_sync.py).
GC_THRESHOLDS = (50_000, 20, 100)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is available (it roughly halves the event loop's own cost). Also tunes
    the garbage collector for the long-running process about to use it."""
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _workers(settings: Settings, asked: int | None) -> int:
    """How many hub processes ``serve`` runs: ``--workers``, else one per core this process may
    run on (on Postgres) and one on SQLite, which it refuses to share between processes."""
    if asked is None:
        if settings.is_embedded:
            return 1
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if asked < 1:
        raise UsageError("--workers must be 1 or more")
    if asked > 1 and settings.is_embedded:
        raise UsageError(
            "--workers above 1 needs Postgres (ONESIGNIN_DATABASE_URL): SQLite takes one writer at a time, and "
            "several processes writing to it fail with 'database is locked' under load instead of queueing"
        )
    return asked


def cmd_serve(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from aiohttp import web

    from identity.web.app import create_app

    log = logging.getLogger("onesignin")
    if args.metrics_host is not None or args.metrics_port is not None:
        settings = settings.model_copy(
            update={
                "metrics_host": settings.metrics_host if args.metrics_host is None else args.metrics_host,
                "metrics_port": settings.metrics_port if args.metrics_port is None else args.metrics_port,
            }
        )
    if args.listen_fd is not None:
        return _serve_as_worker(settings, args)
    if settings.metrics_port == args.port:
        raise UsageError("--metrics-port must differ from --port: the public port does not serve /metrics")
    workers = _workers(settings, args.workers)
    for warning in development_warnings(settings):
        log.warning(warning)
    issuer_port = urlsplit(settings.issuer).port or (443 if settings.issuer.startswith("https") else 80)
    if settings.issuer.startswith("http://") and issuer_port != args.port:
        log.warning(
            "ONESIGNIN_ISSUER is %s but the hub listens on port %s: set ONESIGNIN_ISSUER=http://%s:%s "
            "so that services can reach the URLs it publishes.",
            settings.issuer, args.port, args.host, args.port,
        )
    _preflight(settings, args.host, args.port, metrics=True)
    starting = {
        "status": "starting",
        "url": f"http://{args.host}:{args.port}",
        "issuer": settings.issuer,
        "metrics": f"http://{settings.metrics_host}:{settings.metrics_port}/metrics" if settings.metrics_port else "a free port (logged)",
    }
    if workers > 1:
        return _serve_with_workers(settings, args, workers, starting)
    app = create_app(settings, sync=settings.sync_in_process and not args.no_sync, tracer_provider=_tracing(settings, "hub"))
    _batch_logs_once_serving(app, settings)
    _emit(starting)
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True, loop=_event_loop())
    except OSError as exc:
        raise UsageError(f"cannot listen: {exc.strerror or exc} (is another process using the port or the metrics port?)") from None
    return {"status": "stopped"}


def _batch_logs_once_serving(app: Any, settings: Settings) -> None:
    """A server writes its log lines in batches (``ONESIGNIN_LOG_FLUSH_SECONDS``; an access line
    a request) from its start-up on: by then it handles SIGTERM and SIGINT itself, so it ends
    through ``logging.shutdown``, which writes what waits. Its clean-up writes them and goes back
    to a line at once, before it gives those signals back. (The parent of ``serve --workers``
    writes a few lines and runs no thread; it writes each at once.)"""

    async def batch(_app: Any) -> None:
        logs.batch(settings.log_flush_seconds)

    async def unbatch(_app: Any) -> None:
        logs.batch(0)

    app.on_startup.append(batch)
    app.on_cleanup.append(unbatch)


def _tracing(settings: Settings, role: str) -> Any:
    """This process's tracer provider when tracing is configured (``identity.tracing``), else None."""
    from identity import tracing

    try:
        traced = tracing.provider(settings, role)
    except tracing.TracingUnavailable as exc:
        raise UsageError(str(exc)) from None
    if traced is not None:
        tracing.instrument_process(traced)
    return traced


def _serve_with_workers(settings: Settings, args: argparse.Namespace, workers: int, starting: dict[str, Any]) -> dict[str, Any]:
    """The parent of ``serve --workers N`` (``identity.workers``): binds the port, runs N children."""
    from identity.workers import StartupFailed, Supervisor, listening_sockets

    try:
        sockets = listening_sockets(args.host, args.port, workers)
    except OSError as exc:
        raise UsageError(f"cannot listen: {exc.strerror or exc} (is another process using the port?)") from None
    passed: list[str] = []
    if args.metrics_host is not None:
        passed += ["--metrics-host", args.metrics_host]
    if args.metrics_port is not None:
        passed += ["--metrics-port", str(args.metrics_port)]
    if args.no_sync:
        passed.append("--no-sync")

    def command(index: int, listen_fd: int, ready_fd: int) -> list[str]:
        return [
            sys.executable, "-m", "identity.cli", "serve", "--host", args.host, "--port", str(args.port), *passed,
            "--listen-fd", str(listen_fd), "--ready-fd", str(ready_fd), "--worker-index", str(index),
        ]

    _emit(starting | {"workers": workers})
    try:
        Supervisor(sockets, command).run()
    except StartupFailed as exc:
        raise UsageError(str(exc)) from None
    return {"status": "stopped"}


#: A worker told to stop first stops accepting, then waits this long before closing the connections
#: with no request yet: one it accepted a moment before gets its request read (and answered).
WORKER_LINGER_SECONDS = 1.0


def _serve_as_worker(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """A child of ``serve --workers N`` on the socket its parent bound: worker 0 is the hub as a
    single ``serve`` is (sync pipeline, embedded broker, /metrics), the others serve HTTP only."""
    import signal
    import socket

    from aiohttp import web

    from identity.web.app import create_app

    first = args.worker_index == 0
    app = create_app(
        settings, sync=first and settings.sync_in_process and not args.no_sync, metrics=first, tracer_provider=_tracing(settings, "hub")
    )

    async def ready(_app: web.Application) -> None:
        # Every cleanup context has started: the parent may now retire this worker's predecessor.
        os.write(args.ready_fd, b"1")
        os.close(args.ready_fd)

    app.on_startup.append(ready)
    _batch_logs_once_serving(app, settings)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=60.0)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await runner.setup()
        try:
            site = web.SockSite(runner, socket.socket(fileno=args.listen_fd))
            await site.start()
            await stop.wait()
            # Stop accepting (the socket stays open in the parent: what waits in it goes to this
            # worker's successor), let the connections just accepted send their request, then
            # finish the requests in flight and close (aiohttp's graceful shutdown).
            await site.stop()
            await asyncio.sleep(WORKER_LINGER_SECONDS)
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=_event_loop) as runner:
        runner.run(serve())
    return {"status": "stopped"}


def cmd_demo(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    try:
        from demo.run import SERVICE_PORTS, DemoError, serve, start, start_services
    except ModuleNotFoundError as exc:
        if exc.name != "httpx2":
            raise
        raise UsageError("the demo's member services need httpx2 (authlib's HTTP client): pip install httpx2") from None

    services_only = {
        "--hub-url": args.hub_url,
        "--only": args.only,
        "--store-webhook-base": args.store_webhook_base,
        "--forum-webhook-base": args.forum_webhook_base,
        "--allow-http-webhooks": args.allow_http_webhooks or None,
    }
    if args.services_only:
        if not args.hub_url:
            raise UsageError("--services-only needs --hub-url, where the services reach the hub (e.g. http://127.0.0.1:8000)")
        if args.port is not None:
            raise UsageError("--port is the hub's port: with --services-only give --store-port and --forum-port")
        other = {"store": "forum", "forum": "store"}.get(args.only or "")
        if other and (getattr(args, f"{other}_port") is not None or getattr(args, f"{other}_webhook_base") is not None):
            raise UsageError(f"--only {args.only} runs no {other.title()}: leave out --{other}-port and --{other}-webhook-base")

        def begin() -> Any:
            return start_services(
                settings,
                hub_url=args.hub_url,
                host=args.host,
                store_port=args.store_port or SERVICE_PORTS["store"],
                forum_port=args.forum_port or SERVICE_PORTS["forum"],
                only=args.only,
                webhook_bases={"store": args.store_webhook_base, "forum": args.forum_webhook_base},
                allow_http_webhooks=args.allow_http_webhooks,
            )
    else:
        given = [name for name, value in services_only.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only with --services-only")

        def begin() -> Any:
            return start(settings, host=args.host, port=args.port or 8000, store_port=args.store_port, forum_port=args.forum_port)

    try:
        with asyncio.Runner(loop_factory=_event_loop) as runner:
            return runner.run(serve(begin, announce=_emit))
    except DemoError as exc:
        raise UsageError(str(exc)) from None


def _os_user() -> str:
    """Who ran the command, for an audit record: the OS user, or "cli" when there is none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def cmd_agents_add(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.support import staff
    from identity.support.audit import record

    password = _password(args)
    breached = _breached(settings, password)
    hasher = PasswordHasher(
        memory_cost=settings.argon2_memory_cost, time_cost=settings.argon2_time_cost, parallelism=settings.argon2_parallelism
    )

    async def work(db: Any) -> dict[str, Any]:
        added = await staff.add_staff(
            db,
            settings,
            staff.InlinePasswords(hasher),
            KeyCipher(settings.resolved_secret_key()),
            email=args.email,
            password=password,
            role=args.role,
            created_by=_operator(),
            breached=breached,
        )
        record(db, actor_kind="cli", actor=_os_user(), action="staff.added", account_sub=added.sub, detail={"role": added.role})
        return {"sub": added.sub, "totp_uri": added.totp_uri}

    return asyncio.run(_with_db(settings, work))


def cmd_agents_services(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import select

    from identity.db.models import Account
    from identity.support import services
    from identity.support.audit import record
    from schemas.account import normalize_email

    async def work(db: Any) -> dict[str, Any]:
        try:
            sub = await db.scalar(select(Account.sub).where(Account.email == normalize_email(args.email)))
        except ValueError:
            sub = None
        if sub is None:
            raise admin.InvalidInput(f"no staff member with the email address {args.email!r}")
        owned = await services.set_owned(db, sub=sub, client_ids=args.client_id, granted_by=_operator())
        record(db, actor_kind="cli", actor=_os_user(), action="staff.services_set", account_sub=sub, detail={"services": owned})
        return {"email": args.email, "services": owned}

    return asyncio.run(_with_db(settings, work))


def cmd_agents_list(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from identity.support import staff

    async def work(db: Any) -> dict[str, Any]:
        return {"staff": await staff.listing(db)}

    return asyncio.run(_with_db(settings, work))


def cmd_agents_update(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import select

    from identity.db.models import Account
    from identity.support import staff
    from identity.support.audit import record

    if not args.role and not args.disable:
        raise UsageError("say what to change: --role ROLE and/or --disable")

    async def work(db: Any) -> dict[str, Any]:
        member = None
        if args.role:
            member = await staff.change_role(db, args.role, email=args.email)
        if args.disable:
            member = await staff.disable(db, email=args.email)
        assert member is not None
        sub = await db.scalar(select(Account.sub).where(Account.id == member.account_id))
        # Recorded in the change's own transaction, like the console's staff.* records.
        if args.role:
            record(db, actor_kind="cli", actor=_os_user(), action="staff.role_changed", account_sub=sub, detail={"role": args.role})
        if args.disable:
            record(db, actor_kind="cli", actor=_os_user(), action="staff.disabled", account_sub=sub)
        disabled = member.disabled_at.isoformat() if member.disabled_at else None
        return {"email": args.email, "role": member.role, "disabled_at": disabled}

    return asyncio.run(_with_db(settings, work))


def _date(value: str) -> str:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError("use the form YYYY-MM-DD") from None
    return value


def _cancellation_arguments(cmd: argparse.ArgumentParser, *, clearable: bool = False) -> None:
    clear = " (an empty value removes it)" if clearable else ""
    cmd.add_argument(
        "--cancellation-url", metavar="URL",
        help=f"where a person cancels their account at the service; the hub shows it, and never cancels for them{clear}",
    )
    cmd.add_argument(
        "--cancellation-instructions", metavar="TEXT", help=f"how to cancel an account at the service, in words, shown with or instead of the URL{clear}"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="onesignin",
        description="One Sign In: the identity hub. Configure with ONESIGNIN_* environment variables (see README).",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the hub (provider, pages), in one process or several (--workers)", description="Run the hub.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument(
        "--metrics-host", help="address for /metrics, which the public port does not serve (default: ONESIGNIN_METRICS_HOST, 127.0.0.1)"
    )
    serve.add_argument(
        "--metrics-port", type=int, help="port for /metrics (default: ONESIGNIN_METRICS_PORT, 9102; 0: any free port)"
    )
    serve.add_argument(
        "--no-sync", action="store_true", help="do not run the outbox relay and sync worker here (run `relay` and `worker` instead)"
    )
    serve.add_argument(
        "--workers", type=int, metavar="N",
        help="hub processes sharing the port (default: one per core with Postgres, 1 with SQLite, which allows no more). "
        "Worker 0 also runs the sync pipeline (and the embedded broker) and serves /metrics; the others serve HTTP only. "
        "SIGTERM/SIGINT: finish requests in flight and stop; SIGHUP: replace the workers one by one (new code; the environment "
        "stays the parent's); "
        "a worker that dies is started again",
    )
    for hidden in ("--listen-fd", "--ready-fd", "--worker-index"):  # from the parent of --workers N to its children
        serve.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    for name, func, port, text in (
        ("relay", cmd_relay, 9100, "publish the outbox to Kafka (several may run; one publishes at a time)"),
        ("worker", cmd_worker, 9101, "fan out profile changes and deliver them to services (scale out freely)"),
    ):
        cmd = sub.add_parser(name, help=text, description=f"Run only the sync {name}: {text}. Needs ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS.")
        cmd.add_argument("--host", default="127.0.0.1", help="address for /metrics and /healthz (default 127.0.0.1)")
        cmd.add_argument("--port", type=int, default=port, help=f"port for /metrics and /healthz (default {port})")
        cmd.set_defaults(func=func)

    demo = sub.add_parser(
        "demo",
        help="try it out: two member services, Store and Forum, with the hub in one process or against a running hub",
        description="Run the hub (with profile sync and, unless ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS is set, the "
        "embedded broker) on --port, and two member services, Store and Forum, on the next two ports; the "
        "issuer is http://127.0.0.1:PORT, and the hub's webhooks and back-channel logout may reach loopback "
        "(development only). With --services-only, run only Store and Forum against a hub that "
        "runs elsewhere: they are registered in its database (ONESIGNIN_DATABASE_URL, with the hub's "
        "ONESIGNIN_SECRET_KEY), read their topics at ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS, call the hub at "
        "--hub-url and send people's browsers to ONESIGNIN_ISSUER. Either way the services and a demo "
        "person (ann@example.com) are registered unless they exist, keeping their credentials in "
        "DATA_DIR/demo.json, and the URLs and the person's password are printed as JSON. Sign in to both "
        "services, change your name in one and watch the other follow. Stop with Ctrl-C.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on: 127.0.0.1 (default), localhost, 0.0.0.0 or ::")
    demo.add_argument("--port", type=int, help="the hub's port; Store and Forum use the next two (default 8000)")
    demo.add_argument("--store-port", type=int, help="Store's port (default: --port + 1; 8001 with --services-only)")
    demo.add_argument("--forum-port", type=int, help="Forum's port (default: --port + 2; 8002 with --services-only)")
    demo.add_argument("--services-only", action="store_true", help="start no hub: run the services against the hub at --hub-url")
    demo.add_argument(
        "--hub-url", help="with --services-only: where the services call the hub (discovery, tokens, keys, API), "
        "e.g. http://proxy:8000 on a container network whose issuer is http://127.0.0.1:8000"
    )
    demo.add_argument("--only", choices=["store", "forum"], help="with --services-only: register and run only this service")
    for slug in ("store", "forum"):
        demo.add_argument(
            f"--{slug}-webhook-base", metavar="URL",
            help=f"with --services-only: where the hub's workers reach {slug.title()} (its webhook is URL/webhooks/onesignin; "
            f"default http://127.0.0.1:{slug.upper()}_PORT)",
        )
    demo.add_argument(
        "--allow-http-webhooks", action="store_true",
        help="with --services-only: accept a plain-http webhook base outside loopback, for services on a private "
        "network with the hub's workers (compose), which reach it only if their ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS "
        "allows that network; `onesignin services` keeps requiring https there",
    )
    demo.set_defaults(func=cmd_demo)

    migrate = sub.add_parser("migrate", help="apply database migrations", description="Apply database migrations.")
    migrate.set_defaults(func=cmd_migrate)

    services = sub.add_parser("services", help="manage member services (OAuth clients)", description="Manage member services.")
    services_sub = services.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_service = services_sub.add_parser("add", help="register a member service", description="Register a member service; prints its client_id and, for a service authenticating with a secret, its client_secret (shown once).")
    add_service.add_argument("--name", required=True, help="the service's name, shown to people")
    add_service.add_argument("--redirect-uri", action="append", required=True, help="an exact redirect URI (repeatable)")
    add_service.add_argument("--post-logout-redirect-uri", action="append", help="where RP-initiated logout may return (repeatable)")
    add_service.add_argument("--backchannel-logout-uri", help="where logout tokens are POSTed")
    add_service.add_argument("--scope", default=admin.DEFAULT_SERVICE_SCOPE, help=f"scopes the service may ask for (default: {admin.DEFAULT_SERVICE_SCOPE})")
    add_service.add_argument("--id-token-alg", choices=["RS256", "ES256"], default="RS256", help="ID token signing algorithm")
    add_service.add_argument("--webhook-url", help="receive profile changes here (Standard Webhooks; prints webhook_secret once)")
    add_service.add_argument("--kafka-topic", action="store_true", help="also receive profile changes on the service's own Kafka topic")
    _scim_arguments(add_service)
    _cancellation_arguments(add_service)
    add_service.add_argument(
        "--token-endpoint-auth-method",
        choices=["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        default="client_secret_basic",
        help="how the service authenticates to the token, revocation and introspection endpoints: a secret "
        "(default; printed once), private_key_jwt (signed assertions; give its keys), or none (a public client: "
        "a native or browser app that can keep no secret)",
    )
    add_service.add_argument(
        "--application-type", choices=["web", "native"], default="web",
        help="native: an app on the person's device (RFC 8252): loopback redirect URIs match on any port, "
        "private-use schemes (com.example.app:/callback) are allowed",
    )
    keys = add_service.add_mutually_exclusive_group()
    keys.add_argument(
        "--jwks", metavar="JSON",
        help="the service's public keys, a JWK Set as JSON (required for private_key_jwt; any service's signed request objects)",
    )
    keys.add_argument("--jwks-file", metavar="PATH", help="a file holding the service's JWK Set (as --jwks)")
    keys.add_argument("--jwks-uri", metavar="URL", help="where the service publishes its JWK Set (https; as --jwks)")
    add_service.add_argument(
        "--require-par", action="store_true",
        help="accept this service's authorization requests only when pushed first (RFC 9126, POST ISSUER/par)",
    )
    add_service.add_argument(
        "--require-dpop", action="store_true",
        help="issue this service only DPoP-bound tokens (RFC 9449): a token request without a DPoP proof is refused",
    )
    add_service.add_argument(
        "--require-signed-request-object", action="store_true",
        help="accept this service's authorization requests only as request objects signed with its keys (RFC 9101)",
    )
    add_service.set_defaults(func=cmd_services_add)
    operator_cli.add_service_commands(services_sub)

    update_service = services_sub.add_parser(
        "update", help="change a service's webhook or topic, cancellation route, client authentication or requirements",
        description="Change a service's webhook or topic, how people cancel their account there, how it "
        "authenticates (method, keys, application type), and whether it must push its requests or use DPoP."
    )
    update_service.add_argument("--client-id", required=True)
    hook = update_service.add_mutually_exclusive_group()
    hook.add_argument("--webhook-url", help="a new webhook URL (gets a new secret if it had none; re-enables a disabled one)")
    hook.add_argument("--remove-webhook", action="store_true", help="stop webhook deliveries (what was queued for the webhook is dropped)")
    update_service.add_argument("--rotate-webhook-secret", action="store_true", help="make a new webhook secret (printed once)")
    topic = update_service.add_mutually_exclusive_group()
    topic.add_argument("--kafka-topic", dest="kafka_topic", action="store_true", default=None, help="deliver to the service's topic")
    topic.add_argument("--no-kafka-topic", dest="kafka_topic", action="store_false", help="stop topic deliveries (what was queued for the topic is dropped)")
    _scim_arguments(update_service, removable=True)
    _cancellation_arguments(update_service, clearable=True)
    update_service.add_argument(
        "--token-endpoint-auth-method", choices=["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        help="change how the service authenticates (moving to a secret method prints a new client_secret once; "
        "moving away from secrets removes the secret)",
    )
    update_service.add_argument("--application-type", choices=["web", "native"], help="web or native (RFC 8252)")
    new_keys = update_service.add_mutually_exclusive_group()
    new_keys.add_argument("--jwks", metavar="JSON", help="replace the service's public keys with this JWK Set")
    new_keys.add_argument("--jwks-file", metavar="PATH", help="replace its keys with the JWK Set in this file")
    new_keys.add_argument("--jwks-uri", metavar="URL", help="fetch its keys from here from now on (https)")
    new_keys.add_argument("--remove-jwks", action="store_true", help="forget its keys (not for a private_key_jwt service)")
    par = update_service.add_mutually_exclusive_group()
    par.add_argument("--require-par", dest="require_par", action="store_true", default=None, help="accept only pushed authorization requests")
    par.add_argument("--no-require-par", dest="require_par", action="store_false", help="accept authorization requests sent either way")
    bound = update_service.add_mutually_exclusive_group()
    bound.add_argument("--require-dpop", dest="require_dpop", action="store_true", default=None, help="issue only DPoP-bound tokens")
    bound.add_argument("--no-require-dpop", dest="require_dpop", action="store_false", help="issue Bearer tokens to requests without a DPoP proof")
    signed = update_service.add_mutually_exclusive_group()
    signed.add_argument(
        "--require-signed-request-object", dest="require_signed_request_object", action="store_true", default=None,
        help="accept only authorization requests sent as signed request objects",
    )
    signed.add_argument(
        "--no-require-signed-request-object", dest="require_signed_request_object", action="store_false",
        help="accept plain authorization requests too",
    )
    update_service.set_defaults(func=cmd_services_update)

    sync_cmd = sub.add_parser("sync", help="inspect and steer profile sync", description="Inspect and steer profile sync.")
    sync_sub = sync_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    dead = sync_sub.add_parser(
        "dead-letters", help="list deliveries and notices that gave up", description="List deliveries and notices that gave up."
    )
    dead.add_argument("--client-id", help="only this service's")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(func=cmd_dead_letters)
    again = sync_sub.add_parser(
        "redeliver", help="queue dead deliveries again", description="Queue dead deliveries again (the current profile is sent)."
    )
    again.add_argument("--client-id", help="every dead delivery and notice of this service")
    again.add_argument("--id", type=int, action="append", help="a dead letter id (repeatable)")
    again.add_argument("--notice", type=int, action="append", help="a dead notice id (repeatable): sent again as it was")
    again.add_argument("--all", action="store_true", help="every dead delivery and notice")
    again.set_defaults(func=cmd_redeliver)

    users = sub.add_parser("users", help="manage people's accounts", description="Manage people's accounts.")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_user = users_sub.add_parser("add", help="create an account", description="Create an account; prints its sub.")
    add_user.add_argument("--email", required=True)
    _password_arguments(add_user, password_help="the password, checked against the same policy as the web page")
    add_user.add_argument("--given-name")
    add_user.add_argument("--family-name")
    add_user.add_argument("--birthdate", type=_date, help="YYYY-MM-DD")
    add_user.add_argument("--guardian-email", help="required when the person is a child")
    add_user.add_argument("--verified", action="store_true", help="mark the email address as verified")
    add_user.set_defaults(func=cmd_users_add)
    erase_user = users_sub.add_parser(
        "erase",
        help="erase an account (once no link is active and no request to a service is open)",
        description="Erase a person's hub account and its personal data, leaving a tombstone of its sub; refused while "
        "any linked service still holds an account (the person cancels it there). Sessions are not logged out at "
        "services by back-channel (the person's own erasure at /account/delete does that). Prints the erased sub.",
    )
    erase_user.add_argument("--sub", required=True, help="the account's sub")
    erase_user.add_argument("--operator", help="who is erasing it, for the audit record")
    erase_user.add_argument("--reason", help="why (e.g. a rights request id), for the audit record; no personal data")
    erase_user.set_defaults(func=cmd_users_erase)
    remove_factor = users_sub.add_parser(
        "remove-second-factor",
        help="turn a person's two-step sign-in off (they lost their phone and recovery codes, or their passkeys)",
        description="Turn off two-step sign-in for a person who lost both their authenticator and their recovery codes, "
        "or their passkeys, once support has checked it is them: their authenticator app and every passkey are removed, "
        "they sign in with the password alone and may set them up again. Audited. Prints the sub and what was removed.",
    )
    remove_factor.add_argument("--sub", required=True, help="the account's sub")
    remove_factor.add_argument("--operator", help="who is removing it, for the audit record")
    remove_factor.add_argument("--reason", help="why (e.g. a support ticket id), for the audit record; no personal data")
    remove_factor.set_defaults(func=cmd_users_remove_second_factor)
    operator_cli.add_user_commands(users_sub)

    purge = sub.add_parser(
        "purge",
        help="delete what is past its retention period",
        description="Delete what is past its retention period, each kind in one transaction: sign-in history "
        "(ONESIGNIN_SIGN_IN_RETENTION_DAYS), change history (ONESIGNIN_CHANGE_RETENTION_DAYS), delivered or given-up "
        "service notices (ONESIGNIN_NOTICE_RETENTION_DAYS), audit records (ONESIGNIN_AUDIT_RETENTION_DAYS), closed "
        "rights requests (ONESIGNIN_RIGHTS_REQUEST_RETENTION_DAYS), children's accounts past their grace without "
        "a guardian's consent (ONESIGNIN_CHILD_GRACE_DAYS), and accounts whose address was never confirmed, unused "
        "for ONESIGNIN_UNVERIFIED_RETENTION_DAYS and never linked to a service. `serve` also does it every ONESIGNIN_PURGE_INTERVAL "
        "seconds. Prints the count per kind.",
    )
    purge.set_defaults(func=cmd_purge)

    rights_cmd = sub.add_parser(
        "rights", help="data-subject rights requests", description="List rights requests; answer the hub's own."
    )
    rights_sub = rights_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    rights_list = rights_sub.add_parser(
        "list",
        help="list rights requests (open ones unless told otherwise), earliest due first",
        description="List rights requests, earliest due first, each with its target (null: the hub itself), "
        "status, due date, overdue flag and history. Open ones unless --overdue or --all.",
    )
    which = rights_list.add_mutually_exclusive_group()
    which.add_argument("--overdue", action="store_true", help="only open requests past their due date")
    which.add_argument("--all", action="store_true", help="closed ones too")
    target = rights_list.add_mutually_exclusive_group()
    target.add_argument("--service", metavar="CLIENT_ID", help="only those addressed to this service (or to a removed one, whose closed requests are kept)")
    target.add_argument("--hub", action="store_true", help="only the hub's own (addressed to no service)")
    rights_list.set_defaults(func=cmd_rights_list)
    rights_status = rights_sub.add_parser(
        "status",
        help="move one of the hub's own requests on",
        description="Acknowledge, extend (once, by two months; needs --reason), complete or refuse (needs "
        "--reason) a request addressed to the hub itself. The person sees each step and its reason. A "
        "service's request is answered by that service through the API.",
    )
    rights_status.add_argument("--id", required=True, help="the request's id")
    rights_status.add_argument("--status", required=True, choices=["acknowledged", "extended", "completed", "refused"])
    rights_status.add_argument("--reason", help="shown to the person; required to extend or refuse")
    rights_status.add_argument("--by", default=_operator(), help="who answers, recorded in the history (default: cli:$USER)")
    rights_status.set_defaults(func=cmd_rights_status)
    audit_cmd = sub.add_parser("audit", help="the audit trail", description="Read the append-only audit trail.")
    audit_sub = audit_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    audit_list = audit_sub.add_parser(
        "list",
        help="one account's audit records, oldest first, as a JSON array",
        description="Print every audit record naming the account (support searches name none), oldest first, as "
        "one JSON array: id, at, actor_kind, actor, account_sub, action, reason, detail. Records outlive an erased "
        "account; an unknown sub prints [].",
    )
    whose = audit_list.add_mutually_exclusive_group(required=True)
    whose.add_argument("--account", metavar="SUB", help="the account's sub")
    whose.add_argument(
        "--service", metavar="CLIENT_ID",
        help="instead: the operators' changes to this service (service.*: disabled, enabled, secret_rotated, removed), also once it is removed",
    )
    audit_list.set_defaults(func=cmd_audit_list)
    agents = sub.add_parser(
        "agents", help="support console staff (agents and supervisors)", description="Manage support console staff."
    )
    agents_sub = agents.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_agent = agents_sub.add_parser(
        "add",
        help="make a person staff (creating their hub account if needed)",
        description="Make the account EMAIL a support console staff member (agent, supervisor, admin or "
        "service_owner) with a new TOTP second factor. The hub "
        "account is created (its address taken as confirmed) under the same password policy as `users add` when "
        "there is none; an existing account's password must be given and match. A disabled staff member is "
        "enabled again with a new TOTP secret. Prints sub and totp_uri (otpauth://, for the authenticator app; "
        "shown once).",
    )
    add_agent.add_argument("--email", required=True)
    _password_arguments(add_agent, password_help="the account's password (a new account's is checked against the policy)")
    add_agent.add_argument("--role", required=True, choices=STAFF_ROLES)
    add_agent.set_defaults(func=cmd_agents_add)
    list_agents = agents_sub.add_parser("list", help="list staff", description="List staff: sub, email, role, when added, by whom, disabled.")
    list_agents.set_defaults(func=cmd_agents_list)
    for name, text in (("disable", "disable a staff member (ends their console sessions)"), ("role", "change a staff member's role")):
        cmd = agents_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        cmd.add_argument("--email", required=True)
        cmd.add_argument("--role", choices=STAFF_ROLES, required=name == "role", help="the new role")
        cmd.set_defaults(func=cmd_agents_update, disable=name == "disable")
    owned = agents_sub.add_parser(
        "services",
        help="name the services a service owner looks after",
        description="Make the given services (by client_id) the ones the staff member EMAIL sees in the console as a "
        "service owner, replacing those they had; no --client-id leaves them none. Writes a staff.services_set audit record.",
    )
    owned.add_argument("--email", required=True)
    owned.add_argument("--client-id", action="append", default=[], help="a service's client_id (repeat for several)")
    owned.set_defaults(func=cmd_agents_services)
    return top


def main(argv: list[str] | None = None) -> int:
    logs.configure("text")
    args = parser().parse_args(argv)
    settings = None
    try:
        settings = load_settings()
        logs.configure(settings.log_format)
        result = args.func(settings, args)
    except ConfigurationError as exc:
        logs.flush()  # the lines that led here come before the message
        print(f"onesignin: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except (UsageError, BrokerError, operator_cli.OperatorError) as exc:
        logs.flush()
        print(f"onesignin: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, SQLAlchemyError) as exc:
        # The database went away, or was never migrated: say so, and what fixes it.
        logs.flush()
        message = preflight.explain(settings, exc) if settings is not None else None
        if message is None:
            raise
        print(f"onesignin: {message}", file=sys.stderr)
        return 1
    finally:
        logs.flush()  # before a traceback, if one follows
    if getattr(args, "render", None) is not None and not args.json:
        sys.stdout.write(args.render(result))
        sys.stdout.flush()
    elif args.command not in ("serve", "relay", "worker", "demo"):
        _emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
