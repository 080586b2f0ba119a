"""OpenTelemetry tracing is off unless configured (nothing of OpenTelemetry is even imported);
configured, a request makes a server span named by its route template carrying its request id,
and its SQL statements make spans inside it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp.test_utils import TestServer

from identity import tracing
from identity.settings import Settings
from identity.web.app import create_app
from tests.conftest import HUB_SECRET_KEY, TEST_SETTINGS, free_port

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402


def test_tracing_is_configured_by_the_hubs_setting_or_the_standard_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    plain = Settings(data_dir=tmp_path)
    assert tracing.endpoint(plain) is None and tracing.provider(plain, "hub") is None
    ours = Settings(data_dir=tmp_path, otel_exporter_otlp_endpoint="http://collector:4318")
    assert tracing.endpoint(ours) == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318/")
    assert tracing.endpoint(plain) == "http://otel:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://otel:4318/custom/traces")
    assert tracing.endpoint(plain) == "http://otel:4318/custom/traces"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.endpoint(ours) is None


@pytest.mark.e2e
def test_unconfigured_nothing_of_opentelemetry_is_loaded(tmp_path: Path) -> None:
    """The hub built and serving a request as `serve` does, without any OTEL setting: no
    OpenTelemetry module imported, no tracing middleware."""
    script = (
        "import sys, asyncio\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from identity.cli import _tracing\n"
        "from identity.settings import Settings\n"
        "from identity.web.app import create_app\n"
        "from identity import tracing\n"
        f"settings = Settings(data_dir={str(tmp_path)!r}, secret_key='t' * 40, sync_in_process=False, metrics_port=0)\n"
        "traced = _tracing(settings, 'hub')\n"
        "app = create_app(settings, tracer_provider=traced)\n"
        "async def main():\n"
        "    async with TestClient(TestServer(app)) as client:\n"
        "        assert (await client.get('/healthz')).status == 200\n"
        "asyncio.run(main())\n"
        "assert traced is None and tracing.middleware not in app.middlewares\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ONESIGNIN_"))}
    ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


@pytest.fixture
async def traced_hub(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, InMemorySpanExporter]]:
    port = free_port()
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        issuer=f"http://127.0.0.1:{port}",
        secret_key=HUB_SECRET_KEY,
        **TEST_SETTINGS,  # type: ignore[arg-type]
    )
    spans = InMemorySpanExporter()
    traced = tracing.provider(settings, "hub", exporter=spans)
    server = TestServer(create_app(settings, migrate=False, tracer_provider=traced), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield settings.issuer, spans
    finally:
        await server.close()


async def test_a_request_makes_a_span_with_its_request_id(traced_hub: tuple[str, InMemorySpanExporter]) -> None:
    url, spans = traced_hub
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx2.AsyncClient(base_url=url, timeout=30) as http:
        answer = await http.get("/i/abcdefghijkl?secret=hunter2", headers={"X-Request-Id": "req-traced-0001", "traceparent": parent})
    assert answer.headers["X-Request-Id"] == "req-traced-0001"
    finished = spans.get_finished_spans()
    [server] = [s for s in finished if s.kind == SpanKind.SERVER]
    attributes: dict[str, Any] = dict(server.attributes or {})
    assert server.name == "GET /i/{uid}"
    assert attributes["onesignin.request_id"] == "req-traced-0001"
    assert attributes["http.route"] == "/i/{uid}" and attributes["http.response.status_code"] == answer.status_code
    assert "hunter2" not in str(attributes)
    # The caller's trace goes on; the request's SQL statements are spans inside it.
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    queries = [s for s in finished if s.kind == SpanKind.CLIENT and s.context.trace_id == server.context.trace_id]
    assert queries and all(q.parent is not None for q in queries)


async def test_stopping_waits_a_bounded_time_for_an_unreachable_collector(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Spans still waiting are exported when the process stops, but a collector that does not
    answer holds the stop for ``FLUSH_SECONDS`` only."""
    import threading

    from aiohttp import web
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    released = threading.Event()

    class Unreachable(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            released.wait(30)  # as an exporter retrying a collector that never answers
            return SpanExportResult.FAILURE

    monkeypatch.setattr(tracing, "FLUSH_SECONDS", 0.2)
    # Batched as over OTLP: the span waits in the queue until the stop flushes it.
    traced = TracerProvider(shutdown_on_exit=False)
    traced.add_span_processor(BatchSpanProcessor(Unreachable(), schedule_delay_millis=60000))
    app = web.Application()
    app[tracing.TRACER_PROVIDER] = traced
    contexts = tracing.flushed(app)
    await anext(contexts)
    traced.get_tracer("t").start_span("waiting").end()
    started = asyncio.get_running_loop().time()
    with pytest.raises(StopAsyncIteration):
        await anext(contexts)
    assert asyncio.get_running_loop().time() - started < 5
    assert "spans not exported within 0.2 s of stopping were dropped" in caplog.text
    released.set()
