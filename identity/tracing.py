"""OpenTelemetry tracing, off unless configured: ``ONESIGNIN_OTEL_EXPORTER_OTLP_ENDPOINT``, or the
standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the other
standard ``OTEL_*`` variables, headers, service name, resource attributes, sampler, apply as
usual; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off). Unconfigured,
nothing of OpenTelemetry is imported and no middleware is added: the packages are an optional
extra, ``pip install 'onesignin[tracing]'``.

Configured, each process exports over OTLP/HTTP: a span per HTTP request (``GET /i/{uid}``, with
the request id, the route template and the status; a ``traceparent`` from the caller continues
its trace), a span per SQL statement (SQLAlchemy's instrumentation), and the Kafka records the
relay and the sync worker produce and consume (aiokafka's, which also carries the trace in the
records' headers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from identity.logs import REQUEST_ID
from identity.settings import Settings

#: The process's tracer provider; present only when tracing is configured.
TRACER_PROVIDER = web.AppKey("tracer_provider", object)
_TRACER = web.AppKey("tracer", object)

EXTRA = "pip install 'onesignin[tracing]'"
#: At most this long is spent exporting the last spans when the process stops.
FLUSH_SECONDS = 3.0

log = logging.getLogger(__name__)


class TracingUnavailable(Exception):
    """Tracing is configured but the OpenTelemetry packages are not installed."""


def endpoint(settings: Settings) -> str | None:
    """Where spans go (an OTLP/HTTP traces URL), or None: tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if settings.otel_exporter_otlp_endpoint:
        return _traces_url(settings.otel_exporter_otlp_endpoint)
    if traces := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    if base := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return _traces_url(base)
    return None


def _traces_url(base: str) -> str:
    """The OTLP/HTTP convention: a base endpoint gets ``/v1/traces``."""
    return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"


def provider(settings: Settings, role: str, *, exporter: Any = None) -> Any:
    """A tracer provider for this process (``role``: hub, relay, worker), or None when tracing is
    not configured. ``exporter``: instead of OTLP (tests use an in-memory one, sent at once)."""
    url = endpoint(settings)
    if exporter is None and url is None:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise TracingUnavailable(f"tracing is configured but OpenTelemetry is not installed: {EXTRA}") from None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"onesignin-{role}"}
    # Shut down by ``flushed`` (bounded), not at interpreter exit (where nothing bounds it).
    traced = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    if exporter is not None:
        traced.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingUnavailable(f"tracing is configured but the OTLP exporter is not installed: {EXTRA}") from None
        traced.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return traced


def instrument_process(traced: Any) -> None:
    """Once per process: this provider as the global one, and aiokafka's producers and consumers
    traced (the instrumentation patches the classes)."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor

    trace.set_tracer_provider(traced)
    AIOKafkaInstrumentor().instrument(tracer_provider=traced)


def instrument_engine(traced: Any, engine: Any) -> None:
    """SQL statements of ``engine`` (an ``AsyncEngine``) as spans."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()  # one engine a process (a test's earlier app had its own)
    # Its declared range stops below SQLAlchemy 2.1, whose engine events it uses are unchanged
    # (tests/identity/test_tracing.py checks the spans).
    instrumentor.instrument(engine=engine.sync_engine, tracer_provider=traced, skip_dep_check=True)


def add(app: web.Application, traced: Any) -> None:
    """Trace ``app``'s requests with ``traced`` (call before the app is frozen); spans still
    waiting are exported when it stops."""
    from opentelemetry import trace

    app[TRACER_PROVIDER] = traced
    app[_TRACER] = trace.get_tracer("onesignin", tracer_provider=traced)
    app.middlewares.insert(1, middleware)  # inside request_context: the request id is known
    app.cleanup_ctx.insert(0, flushed)  # cleaned up last: after every other context's spans


async def flushed(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: spans still waiting are exported when the process stops, for at most
    ``FLUSH_SECONDS`` (an unreachable collector would hold the exporter in its retries for much
    longer, and the process's stop with it); what is left then is dropped."""
    yield
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def shut_down() -> None:
        try:
            app[TRACER_PROVIDER].shutdown()  # type: ignore[attr-defined]
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(done.set)

    threading.Thread(target=shut_down, name="tracing-flush", daemon=True).start()
    try:
        async with asyncio.timeout(FLUSH_SECONDS):
            await done.wait()
    except TimeoutError:
        log.warning("tracing: spans not exported within %s s of stopping were dropped", FLUSH_SECONDS)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One server span per request, named by its method and route template, continuing the
    caller's trace (``traceparent``); its attributes never hold a query string or a header value
    other than the request id."""
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind, Status, StatusCode

    from identity.web.middleware import route_of

    route = route_of(request)
    attributes = {
        "http.request.method": request.method,
        "http.route": route,
        "url.path": request.path,
        "onesignin.request_id": REQUEST_ID.get() or "",
    }
    tracer = request.config_dict[_TRACER]
    with tracer.start_as_current_span(  # type: ignore[attr-defined]
        f"{request.method} {route}", context=propagate.extract(request.headers), kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
