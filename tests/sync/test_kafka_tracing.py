"""With tracing configured, the Kafka records the hub produces and consumes are spans, and a
record carries its trace in a ``traceparent`` header (aiokafka's instrumentation)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from identity import tracing
from identity.settings import Settings
from sync.broker import EmbeddedBroker

pytest.importorskip("opentelemetry.instrumentation.aiokafka")
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture
def spans(tmp_path: object) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    traced = tracing.provider(Settings(secret_key="s" * 40), "worker", exporter=exporter)
    AIOKafkaInstrumentor().instrument(tracer_provider=traced)  # what instrument_process does, without the global provider
    try:
        yield exporter
    finally:
        AIOKafkaInstrumentor().uninstrument()


async def test_records_produced_and_consumed_are_spans(spans: InMemorySpanExporter, broker: EmbeddedBroker | None) -> None:
    if broker is None:
        pytest.skip("the embedded broker only")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("traced", b"{}", key=b"sub", headers=[("request-id", b"req-kafka-0001")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        consumer.assign([TopicPartition("traced", p) for p in consumer.partitions_for_topic("traced") or ()])
        async with asyncio.timeout(30):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    headers = dict(record.headers)
    assert headers["request-id"] == b"req-kafka-0001" and b"traceparent" not in headers.get("request-id", b"")
    assert "traceparent" in headers
    kinds = {s.kind for s in spans.get_finished_spans() if "traced" in s.name}
    assert {SpanKind.PRODUCER, SpanKind.CONSUMER} <= kinds
