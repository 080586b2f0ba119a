"""Running the sync pipeline inside an aiohttp application, as ``cleanup_ctx`` entries: the
embedded broker (when no Kafka is configured), the outbox relay, the fan-out consumer and the
deliverer. ``serve`` runs them beside the hub; ``relay`` and ``worker`` run them alone, with
only ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness). The metrics name every service's ``client_id``, so the hub
serves its ``/metrics`` on a port of its own (:func:`metrics_server`), never on the public one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from identity import appkeys as K
from identity import notices, outbound, rollups, tracing
from identity.db.engine import reachable
from identity.db.migrate import current_revision, migration_state
from identity.db.models import utcnow
from identity.rights.metrics import refresh_overdue
from identity.sealing import KeyCipher
from identity.settings import Settings
from sync.broker import EmbeddedBroker
from sync.deliver import Deliveries
from sync.endpoints import Endpoints
from sync.engine import Engine, Sender
from sync.fanout import FanOut
from sync.gauges import refresh_gauges
from sync.metrics import SyncMetrics
from sync.notices import Notices
from sync.relay import Relay, unpublish_unconsumed
from sync.service_topics import ServiceTopics
from sync.ssf import SetSigner

log = logging.getLogger(__name__)

BOOTSTRAP = web.AppKey("kafka_bootstrap", str)
TASKS = web.AppKey("sync_tasks", dict)
EMBEDDED = web.AppKey("embedded_broker", EmbeddedBroker)
METRICS = web.AppKey("sync_metrics", SyncMetrics)
DELIVERER = web.AppKey("sync_deliverer", Engine)
#: Where the hub's metrics server answers (``http://host:port/metrics``), once it listens.
METRICS_URL = web.AppKey("metrics_url", str)

#: A scrape reads the database's gauges again once they are older than this.
GAUGE_SECONDS = 5.0
#: Each service's backlog is sampled into the console's chart rollups this often.
BACKLOG_SAMPLE_SECONDS = 5.0
#: How long a scrape waits for the gauges to be read before it answers with the last figures.
GAUGE_READ_SECONDS = 2.0


def add_sync(app: web.Application, *, relay: bool, worker: bool, gauges: bool = True) -> None:
    """Add the broker (if needed), relay and/or worker to ``app`` (after its database ctx), and
    unless ``gauges`` is False the gauges ``/metrics`` reads from the database and the backlog
    samples behind the console's charts."""
    app[METRICS] = SyncMetrics()
    app[TASKS] = {}
    if relay or worker:
        app.cleanup_ctx.append(_broker)
    if gauges:
        app[GAUGES] = Gauges(app)
        app.cleanup_ctx.append(_backlog_samples)
    # Cleanup runs in reverse: the relay stops publishing before the worker stops consuming.
    if worker:
        app[notices.WAKE] = asyncio.Event()
        app.cleanup_ctx.append(_worker)
    if relay:
        app.cleanup_ctx.append(_relay)


def idempotent(app: web.Application) -> bool:
    # The embedded broker (Tansu) does not support idempotent producers.
    return app[K.SETTINGS].kafka_enable_idempotence and EMBEDDED not in app


async def _broker(app: web.Application) -> AsyncIterator[None]:
    configured = app[K.SETTINGS].kafka_bootstrap_servers
    if configured:
        app[BOOTSTRAP] = configured
        yield
        return
    # A memory-only broker starts empty: events an earlier one took but nobody consumed are
    # published again (the outbox is the source of truth). If it dies, it is started again on
    # the same port, empty: the relay sees the new cluster id and does the same.
    async with app[K.DB].begin() as db:
        requeued = await unpublish_unconsumed(db)
    if requeued:
        log.info("embedded broker: %s events published before but not consumed are published again", requeued)
    broker = EmbeddedBroker(on_restart=app[METRICS].embedded_broker_restarts.inc)
    await broker.start()
    app[EMBEDDED] = broker
    app[BOOTSTRAP] = broker.bootstrap
    try:
        yield
    finally:
        await broker.stop()


def _background(name: str, make: Callable[[web.Application], Awaitable[None]]):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(make(app), name=name)
        app[TASKS][name] = task
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


async def _run_relay(app: web.Application) -> None:
    await Relay(app[K.SETTINGS], app[K.DB], app[BOOTSTRAP], idempotent=idempotent(app), metrics=app[METRICS]).run()


_relay = _background("outbox-relay", _run_relay)


async def _worker(app: web.Application) -> AsyncIterator[None]:
    settings = app[K.SETTINGS]
    wake = asyncio.Event()
    # Webhooks go to services' addresses: public ones only, answers read bounded (identity.outbound).
    async with outbound.client(
        settings, user_agent="OneSignIn-Webhooks/1", limit=settings.sync_concurrency, keepalive_timeout=60
    ) as http:
        bootstrap = app[BOOTSTRAP]
        # One registry of endpoints and one sender (one Kafka producer) for both kinds: a 410 to
        # a notice closes the webhook to deliveries at once, and the other way round.
        endpoints = Endpoints(settings, app[K.DB], app[K.CIPHER], topics=True)
        sender = Sender(
            settings,
            http,
            ServiceTopics(settings, app[K.DB], bootstrap, idempotent=idempotent(app), metrics=app[METRICS]),
            SetSigner(settings, app[K.DB], app[K.CIPHER]),
        )
        deliverer = Engine(Deliveries(settings), settings, app[K.DB], endpoints, sender, metrics=app[METRICS], wake=wake)
        app[DELIVERER] = deliverer
        fanout = FanOut(settings, app[K.DB], bootstrap, metrics=app[METRICS], wake=wake, deliverer=deliverer)
        notice_deliverer = Engine(Notices(settings), settings, app[K.DB], endpoints, sender, metrics=app[METRICS], wake=app[notices.WAKE])
        watcher = asyncio.create_task(sender.watch_topics_forever(endpoints), name="sync-topics")
        tasks = [
            asyncio.create_task(notice_deliverer.run(), name="sync-notices"),
            asyncio.create_task(fanout.run(), name="sync-fanout"),
            asyncio.create_task(deliverer.run(), name="sync-deliverer"),
        ]
        app[TASKS].update({t.get_name(): t for t in tasks})
        try:
            yield
        finally:
            # Notices stop first, then the fan-out and the deliverer; the producer they share last.
            tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[0]
            for task in [*tasks, watcher]:
                task.cancel()
            for task in [*tasks, watcher]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await sender.close()


class Gauges:
    """The gauges read from the database (the outbox, backlogs, dead letters, quarantined
    endpoints, overdue rights requests), read by a scrape that finds them older than
    :data:`GAUGE_SECONDS` (or never read), and only then: a process nobody scrapes never reads
    them, and scrapes close together share one read."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def fresh(self) -> None:
        """Read them again if they are older than :data:`GAUGE_SECONDS`. A failure, or a read
        taking over :data:`GAUGE_READ_SECONDS` (a scrape has a deadline of its own), is logged
        and the scrape answers with the figures last read."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._read_at is not None and loop.time() - self._read_at < GAUGE_SECONDS:
                return
            try:
                async with asyncio.timeout(GAUGE_READ_SECONDS), self._app[K.DB]() as db:
                    await refresh_gauges(db, self._app[METRICS])
                    await refresh_overdue(db, self._app[METRICS].rights_overdue)
                self._read_at = loop.time()
            except TimeoutError:
                log.warning("sync metrics: the gauges took over %.0f s to read; answering with the last figures", GAUGE_READ_SECONDS)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("sync metrics: %s: %s", type(exc).__name__, exc)


GAUGES = web.AppKey("sync_gauges", Gauges)


async def _sample_backlog(app: web.Application) -> None:
    """Each service's backlog, sampled every :data:`BACKLOG_SAMPLE_SECONDS` into the per-minute
    rollups behind the console's charts."""
    backlogged: set[int] = set()  # services with a backlog at the last sample
    while True:
        await asyncio.sleep(BACKLOG_SAMPLE_SECONDS)
        try:
            async with app[K.DB].begin() as db:
                backlogged = await rollups.sample_backlog(db, utcnow(), backlogged)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("sync metrics: %s: %s", type(exc).__name__, exc)


_backlog_samples = _background("sync-backlog-samples", _sample_backlog)


def standalone_app(
    settings: Settings, database: Callable[[web.Application], AsyncIterator[None]], *, relay: bool, worker: bool, tracer_provider: Any = None
) -> web.Application:
    """A relay or worker process: the database, the sync pipeline, ``/metrics`` and ``/healthz``
    (traced with ``tracer_provider`` when tracing is configured: its SQL and Kafka records)."""
    app = web.Application()
    if tracer_provider is not None:
        app[tracing.TRACER_PROVIDER] = tracer_provider
        app.cleanup_ctx.append(tracing.flushed)
    app[K.SETTINGS] = settings
    app[K.CIPHER] = KeyCipher(settings.resolved_secret_key())
    app.cleanup_ctx.append(database)
    add_sync(app, relay=relay, worker=worker)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    return app


async def metrics_server(app: web.Application) -> AsyncIterator[None]:
    """The hub's ``/metrics`` on its own listener (``ONESIGNIN_METRICS_HOST`` and
    ``ONESIGNIN_METRICS_PORT``, loopback by default), like a relay's or a worker's: scraped by
    the operator's Prometheus, out of reach of the public port and its proxy."""
    settings = app[K.SETTINGS]
    side = web.Application()
    side[METRICS] = app[METRICS]
    side[K.HUB_METRICS] = app[K.HUB_METRICS]
    side[K.ENGINE] = app[K.ENGINE]
    if GAUGES in app:
        side[GAUGES] = app[GAUGES]
    side.router.add_get("/metrics", metrics)
    runner = web.AppRunner(side, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        app[METRICS_URL] = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
        log.info("metrics at %s", app[METRICS_URL])
        yield
    finally:
        await runner.cleanup()


async def health(request: web.Request) -> web.Response:
    """503 when one of this process's sync tasks has stopped (they are meant to run forever)."""
    stopped = sorted(name for name, task in request.app[TASKS].items() if task.done())
    if stopped:
        return web.json_response({"status": "stopped", "stopped": stopped}, status=503)
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when this process can do its work, else 503 naming what failed (never
    an address, a secret or a stack trace). Checks the database (a trivial query) and that it is
    migrated to this version's revision, Kafka where this process runs the relay or the worker
    (a connection to a bootstrap server), and that its sync tasks still run. Each check is
    bounded by ``ONESIGNIN_READINESS_TIMEOUT``."""
    app = request.config_dict
    timeout = app[K.SETTINGS].readiness_timeout
    names = ["database"]
    probes = [reachable(app[K.ENGINE], timeout)] if K.ENGINE in app else [_false()]
    if BOOTSTRAP in app:
        names.append("kafka")
        probes.append(kafka_reachable(app[BOOTSTRAP], timeout))
    answers = await asyncio.gather(*probes, _migrations(app, timeout))
    checks = {name: "ok" if ok else "unreachable" for name, ok in zip(names, answers[:-1], strict=True)}
    checks["migrations"] = answers[-1]
    if BOOTSTRAP in app:
        checks["sync"] = "stopped" if any(task.done() for task in app[TASKS].values()) else "ok"
    # A database migrated by a newer version (a rolling upgrade) still serves this one.
    failed = [name for name, state in checks.items() if state not in ("ok", "newer")]
    if failed:
        return web.json_response({"status": "not ready", "failed": failed, "checks": checks}, status=503)
    return web.json_response({"status": "ready", "checks": checks})


async def _false() -> bool:
    return False


async def _migrations(app: Mapping[Any, Any], timeout: float) -> str:
    """Whether the database is at the revision this version needs (``identity.db.migrate.migration_state``),
    or ``unknown`` when it does not answer in time."""
    if K.ENGINE not in app:
        return "unknown"
    try:
        return migration_state(await asyncio.wait_for(current_revision(app[K.ENGINE]), timeout))
    except (TimeoutError, OSError, SQLAlchemyError):
        return "unknown"


async def kafka_reachable(bootstrap: str, timeout: float) -> bool:
    """Whether one of the bootstrap servers (``host:port,...``) accepts a connection in time."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
        except (TimeoutError, OSError, ValueError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's sync metrics, and on the hub its own
    (``identity.metrics``: every worker's, under ``serve --workers N``)."""
    app = request.config_dict
    gauges = app.get(GAUGES)
    if gauges is not None:
        await gauges.fresh()
    body = generate_latest(app[METRICS].registry)
    hub = app.get(K.HUB_METRICS)
    if hub is not None:
        if K.ENGINE in app:
            hub.sample_pool(app[K.ENGINE].pool)
        body += hub.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
