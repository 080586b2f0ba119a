"""Builds the hub's aiohttp application. Every resource is a ``cleanup_ctx``: opened in order,
closed in reverse; background tasks are cancelled and awaited."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files

import aiohttp_jinja2
import jinja2
from aiohttp import web

from identity import appkeys as K
from identity import outbound, tracing
from identity import purge as retention
from identity.accounts import throttle
from identity.accounts.hashing import HashQueue
from identity.accounts.passwords import PasswordHasher
from identity.accounts.pwned_api import range_api
from identity.api import routes as api_routes
from identity.db import dialect
from identity.db.cleanup import purge_expired
from identity.db.engine import create_engine, create_sessionmaker
from identity.db.migrate import upgrade
from identity.db.units import whole
from identity.mail import mailer_for
from identity.metrics import HubMetrics
from identity.oidc import keys as signing_keys
from identity.oidc.actions import routes as provider_routes
from identity.oidc.server import Provider
from identity.oidc.service_tokens import ServiceTokenCodec
from identity.pages import COMPILED as COMPILED_PAGES
from identity.pages import configure as configure_pages
from identity.pages import routes as page_routes
from identity.oidc.dpop import Nonces
from identity.sealing import KeyCipher
from identity.settings import Settings
from identity.support import routes as console_routes
from identity.support.app import create_console
from identity.web import language, middleware
from sync.runtime import add_sync, metrics_server, ready

log = logging.getLogger(__name__)

KEY_REFRESH_SECONDS = 300
PURGE_SECONDS = 600
POOL_SAMPLE_SECONDS = 5


def create_app(
    settings: Settings, *, migrate: bool | None = None, sync: bool | None = None, metrics: bool = True, tracer_provider: Any = None
) -> web.Application:
    """The whole hub as one aiohttp application. ``migrate`` defaults to True on the
    embedded database; production runs ``onesignin migrate`` once per deployment. ``sync``
    (default: ``settings.sync_in_process``) also runs the outbox relay and sync worker here.
    ``metrics=False`` (the HTTP-only processes of ``serve --workers N``) leaves out the
    ``/metrics`` listener and the gauges it reports: one process of the hub serves them.
    ``tracer_provider``: OpenTelemetry's, when tracing is configured (``identity.tracing``)."""
    app = web.Application(
        middlewares=[middleware.request_context, middleware.security_headers, middleware.errors, language.language, middleware.whole_body],
        client_max_size=64 * 1024,
    )
    app[K.SETTINGS] = settings
    secret = settings.resolved_secret_key()
    app[K.SECRET] = secret.encode()
    app[K.CIPHER] = KeyCipher(secret)
    app[K.HASHER] = PasswordHasher(
        memory_cost=settings.argon2_memory_cost,
        time_cost=settings.argon2_time_cost,
        parallelism=settings.argon2_parallelism,
    )
    app[K.HUB_METRICS] = HubMetrics()
    app[K.PROVIDER] = Provider(settings, signing_keys.KeyRing(), ServiceTokenCodec(secret), Nonces(secret))
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("identity.pages", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        auto_reload=False,
        context_processors=[],
        bytecode_cache=COMPILED_PAGES,
    )
    configure_pages(env)
    app.cleanup_ctx.append(database(settings.is_embedded if migrate is None else migrate))
    app.cleanup_ctx.append(_revocation_listener)
    in_process = settings.sync_in_process if sync is None else sync
    add_sync(app, relay=in_process, worker=in_process, gauges=metrics)
    if metrics:
        app.cleanup_ctx.append(metrics_server)
    app.cleanup_ctx.append(_every(POOL_SAMPLE_SECONDS, "pool-metrics", _sample_pool, first=True))
    app.cleanup_ctx.append(_every(KEY_REFRESH_SECONDS, "signing-keys", _refresh_keys, first=True))
    app.cleanup_ctx.append(_every(PURGE_SECONDS, "purge-expired", _purge))
    app.cleanup_ctx.append(_every(settings.purge_interval, "retention-purge", _retention_purge))
    app.cleanup_ctx.append(_mailer)
    app.cleanup_ctx.append(_http_client)
    app.cleanup_ctx.append(_breach_api)
    app.cleanup_ctx.append(_hash_pool)
    # Every URL the hub serves: each handler package lists its own; only this factory adds them.
    provider_routes.add_routes(app)
    api_routes.add_routes(app)
    page_routes.add_routes(app)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_static("/static", str(files("identity.pages") / "static"), name="static")
    app.add_subapp("/support", create_console(console_routes.add_routes))
    if tracer_provider is not None:
        tracing.add(app, tracer_provider)
    return app


async def health(request: web.Request) -> web.Response:
    """Liveness: the process is up and answering (``/readyz`` says whether it can do its work)."""
    return web.json_response({"status": "ok"})


def database(migrate: bool):  # type: ignore[no-untyped-def]
    """The engine and session factory as a cleanup context (migrating first if asked)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(app[K.SETTINGS])
        if tracing.TRACER_PROVIDER in app:
            tracing.instrument_engine(app[tracing.TRACER_PROVIDER], engine)
        if migrate:
            await upgrade(engine)
        app[K.ENGINE] = engine
        app[K.DB] = create_sessionmaker(engine)
        yield
        await engine.dispose()

    return ctx


async def _revocation_listener(app: web.Application) -> AsyncIterator[None]:
    """On Postgres, revoked service tokens are known in memory (identity.oidc.revocations)."""
    if not dialect.is_postgres_engine(app[K.ENGINE]):
        yield
        return
    task = asyncio.create_task(app[K.PROVIDER].revocations.run(app[K.SETTINGS].resolved_database_url), name="service-token-revocations")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sample_pool(app: web.Application) -> None:
    app[K.HUB_METRICS].sample_pool(app[K.ENGINE].pool)


async def _refresh_keys(app: web.Application) -> None:
    settings = app[K.SETTINGS]
    async with app[K.DB].begin() as db:
        await signing_keys.ensure_keys(
            db,
            app[K.CIPHER],
            rotation=dt.timedelta(days=settings.key_rotation_days),
            publish_lead=dt.timedelta(seconds=settings.key_publish_lead),
            keep_after=dt.timedelta(seconds=max(settings.id_token_ttl, settings.access_token_ttl) + 3600),
        )
    async with app[K.DB]() as db:
        app[K.PROVIDER].keys = await signing_keys.load_keys(db, app[K.CIPHER])


def _every(seconds: float, name: str, work: Callable[[web.Application], Awaitable[None]], *, first: bool = False):  # type: ignore[no-untyped-def]
    """A cleanup context running ``work`` every ``seconds`` (and once before serving with
    ``first``); a failed round is logged and tried again next time."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if first:
            await work(app)

        async def forever() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await whole(work(app))
                except Exception:
                    log.exception("%s failed; trying again in %s s", name, seconds)

        task = asyncio.create_task(forever(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


async def _purge(app: web.Application) -> None:
    """Delete protocol records that have expired."""
    async with app[K.DB].begin() as db:
        settings = app[K.SETTINGS]
        counts = await purge_expired(
            db, throttle_window=throttle.longest_window(settings), rollup_retention=dt.timedelta(days=settings.sync_rollup_retention_days)
        )
    if any(counts.values()):
        log.info("purged expired records: %s", {k: v for k, v in counts.items() if v})


async def _retention_purge(app: web.Application) -> None:
    """Delete what is past its retention period (``identity.purge``)."""
    counts = await retention.run(app[K.DB], app[K.SETTINGS])
    if any(counts.values()):
        log.info("retention purge: %s", {k: v for k, v in counts.items() if v})


async def _mailer(app: web.Application) -> AsyncIterator[None]:
    app[K.MAILER] = mailer_for(app[K.SETTINGS])
    app[K.MAIL_TASKS] = set()
    yield
    pending = set(app[K.MAIL_TASKS])
    if pending:
        # Let mail already accepted go out before the process stops.
        await asyncio.wait(pending, timeout=30)


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    # Back-channel logout goes to services' addresses: public ones only, answers read bounded.
    async with outbound.client(app[K.SETTINGS], user_agent="OneSignIn") as http:
        app[K.HTTP] = http
        yield


async def _breach_api(app: web.Application) -> AsyncIterator[None]:
    async with range_api(app[K.SETTINGS]) as api:
        if api is not None:
            app[K.BREACH_API] = api
        yield


async def _hash_pool(app: web.Application) -> AsyncIterator[None]:
    # argon2id is CPU-bound and releases the GIL: hash on worker threads, one per core, with a
    # bound on what waits (identity.accounts.hashing).
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="argon2") as pool:
        app[K.HASHING] = HashQueue(app[K.HASHER], pool, app[K.SETTINGS].hash_queue)
        yield
