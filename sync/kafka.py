"""Kafka clients configured from the hub's settings (aiokafka), and topic creation."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from identity.settings import Settings

log = logging.getLogger(__name__)


def client_options(settings: Settings, bootstrap: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "onesignin",
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": 15000,
        "retry_backoff_ms": 250,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context()
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def producer(settings: Settings, bootstrap: str, *, idempotent: bool) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica (acks=all). Idempotence is Apache
    Kafka's; the embedded broker lacks it, so the caller decides."""
    return AIOKafkaProducer(
        **client_options(settings, bootstrap),
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=2,
        max_batch_size=256 * 1024,
        compression_type=None,
    )


def consumer(settings: Settings, bootstrap: str, group_id: str) -> AIOKafkaConsumer:
    """A group member that commits offsets itself, after its work is durably recorded."""
    return AIOKafkaConsumer(
        **client_options(settings, bootstrap),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=500,
        # A change should not wait half a second at each hop for a fuller fetch.
        fetch_max_wait_ms=50,
        session_timeout_ms=10000,
        heartbeat_interval_ms=2000,
        # A topic that reappears (a memory-only broker restarted, an operator re-created it) is
        # seen within seconds, not after the default five minutes with nothing assigned.
        metadata_max_age_ms=5000,
    )


async def ensure_topics(settings: Settings, bootstrap: str, topics: dict[str, int]) -> None:
    """Create the named topics (name to partition count) unless they exist."""
    admin = AIOKafkaAdminClient(**client_options(settings, bootstrap))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, num_partitions=n, replication_factor=settings.kafka_replication_factor) for name, n in topics.items() if name not in existing]
        if not missing:
            return
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            return
        for topic, code, *_ in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):
                log.warning("could not create topic %s (Kafka error %s)", topic, code)
    finally:
        await admin.close()
