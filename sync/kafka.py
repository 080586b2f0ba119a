"""Kafka clients configured from the hub's settings (aiokafka), and the hub's topics: created
when missing, and checked for the partition count they were configured with.

A topic can exist with another partition count than the hub's settings say: a broker that
creates topics on a client's metadata request (the embedded broker always does; Apache Kafka
with ``auto.create.topics.enable``) makes it with its own default when a consumer asks before
the hub has created it, and the embedded broker restarted empty has lost every topic. A
producer that still believes the old layout publishes to partitions that do not exist, and the
embedded broker even acknowledges that. So every producer here keeps its metadata briefly,
``Topics.check`` compares what exists with what is configured (and with what the producer
believes), re-creates a wrong profile topic on the memory-only embedded broker (services' topics
have the broker's own count there), and on any other cluster refuses it, with the
``kafka-topics`` command that fixes it (``TopicLayoutError``)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from identity.settings import Settings
from schemas.events import PROFILE_TOPIC
from sync.broker import memory_only
from sync.metrics import SyncMetrics

log = logging.getLogger(__name__)

#: How long a client trusts what it knows of topics and partitions. A topic re-created with
#: another partition count, or a broker restarted empty, is seen within seconds instead of the
#: default five minutes of publishing to partitions that are gone.
METADATA_MAX_AGE_MS = 5000
#: How often the relay and the worker check their topics: on the embedded broker, which can
#: come back empty at any moment, and on a cluster, where it takes an operator to change them.
CHECK_SECONDS_MEMORY = 5.0
CHECK_SECONDS_CLUSTER = 30.0
REPAIR_ATTEMPTS = 6  # another client's metadata request can make the topic again in between
LOG_AGAIN_SECONDS = 60.0  # a wrong layout is logged again at most this often per topic


def client_options(settings: Settings, bootstrap: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "onesignin",
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": 15000,
        "retry_backoff_ms": 250,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
        options["ssl_context"] = context
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
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
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
        session_timeout_ms=int(settings.kafka_session_timeout * 1000),
        heartbeat_interval_ms=int(settings.kafka_session_timeout * 200),
        # A topic that reappears (a memory-only broker restarted, an operator re-created it) is
        # seen within seconds, not after the default five minutes with nothing assigned.
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )


async def ensure_topics(settings: Settings, bootstrap: str, topics: dict[str, int]) -> None:
    """Create the named topics (name to partition count) unless they exist. (A consumer reads
    whatever partitions a topic has; the publishers check the layout, with ``Topics``.)"""
    admin = AIOKafkaAdminClient(**client_options(settings, bootstrap))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            await _create(admin, settings, missing)
    finally:
        await admin.close()


async def _made_by_naming(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> None:
    """Make ``topics`` on the embedded broker as a consumer's metadata request makes them, with
    the broker's own partition count (``Topics.check``, ``broker_counts``)."""
    await admin.describe_topics(sorted(topics))


async def _create(admin: AIOKafkaAdminClient, settings: Settings, topics: dict[str, int]) -> None:
    new = [NewTopic(name, num_partitions=n, replication_factor=settings.kafka_replication_factor) for name, n in topics.items()]
    try:
        response = await admin.create_topics(new)
    except TopicAlreadyExistsError:
        return
    for topic, code, *_ in getattr(response, "topic_errors", []):
        if code not in (0, TopicAlreadyExistsError.errno):
            log.warning("could not create topic %s (Kafka error %s)", topic, code)


class TopicLayoutError(Exception):
    """One of the hub's topics has another partition count than configured, on a cluster the
    hub does not change by itself. Nothing is published to it until an operator fixes it:
    ``str()`` says how (logged, never sent to a service); ``public`` is what a service may read."""

    public = "Kafka: the topic's partition count is not the configured one"

    def __init__(self, topic: str, actual: int, wanted: int, fix: str) -> None:
        self.topic, self.actual, self.wanted, self.fix = topic, actual, wanted, fix
        super().__init__(
            f"topic {topic} has {actual} partitions, not the {wanted} configured; nothing is published to it until "
            f"that is fixed: {fix}"
        )


def layout_fix(settings: Settings, bootstrap: str, topic: str, actual: int, wanted: int) -> str:
    """What an operator runs (or sets) to bring ``topic`` to the configured layout."""
    setting = (
        "ONESIGNIN_KAFKA_PROFILE_PARTITIONS"
        if topic == settings.kafka_topic_prefix + PROFILE_TOPIC
        else "ONESIGNIN_KAFKA_SERVICE_PARTITIONS"
    )
    tool = f"kafka-topics.sh --bootstrap-server {bootstrap.split(',')[0]}"
    if settings.kafka_security_protocol != "PLAINTEXT":
        tool += " --command-config client.properties"
    if actual < wanted:
        return f"{tool} --alter --topic {topic} --partitions {wanted}"
    return (
        f"set {setting}={actual} (Kafka cannot take partitions away), or delete the topic and create it again: "
        f"{tool} --delete --topic {topic} && {tool} --create --topic {topic} --partitions {wanted} "
        f"--replication-factor {settings.kafka_replication_factor}"
    )


@dataclass
class Checked:
    """What one ``Topics.check`` found. ``new_broker``: the cluster id is not the one seen at
    the previous check (the embedded broker restarted, empty). ``created``: topics that were
    missing. ``recreated``: topics re-created with their configured partition count (the
    embedded broker only). ``wrong``: topics left as they are, with what fixes them."""

    cluster_id: str
    new_broker: bool = False
    created: set[str] = field(default_factory=set)
    recreated: set[str] = field(default_factory=set)
    wrong: dict[str, TopicLayoutError] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)  # the checked topics as they now are

    @property
    def memory_only(self) -> bool:
        return memory_only(self.cluster_id)

    def lost(self, topic: str) -> bool:
        """Whether what was published to ``topic`` before this check may be gone."""
        return self.new_broker or topic in self.created or topic in self.recreated


class Topics:
    """The hub's topics on one broker, for one publisher (the relay, or a worker's deliverer).
    ``check`` is called before the first publication to a topic, after errors, and every
    ``interval()`` seconds; the admin client is made again after any error."""

    def __init__(self, settings: Settings, bootstrap: str, metrics: SyncMetrics | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.cluster_id: str | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._logged: dict[str, float] = {}

    def interval(self) -> float:
        return CHECK_SECONDS_MEMORY if self.cluster_id is None or memory_only(self.cluster_id) else CHECK_SECONDS_CLUSTER

    async def check(self, wanted: dict[str, int], *, watched: tuple[str, ...] = (), broker_counts: bool = False) -> Checked:
        """Make the ``wanted`` topics (name to partition count) exist with that count where the
        hub may (missing anywhere; wrong on the embedded broker), and say what was found; the
        ``watched`` topics' partition counts are only read (``Checked.partitions``).

        ``broker_counts`` (services' topics): on the embedded broker these topics have the
        broker's own partition count, the one a consumer's metadata request makes them with. A
        missing one is made by such a request; one that exists is taken as it is, never made
        again. Their consumers are the services', which keep their place in each partition: a
        topic made again under them (two workers that both found it wrong each make it again,
        with the same count) has them skip what lies below that place, and a count that changes
        when the broker restarts can leave a partition to nobody in an aiokafka group (see
        ``BrokerWatch``). Only the hub's own consumers read a topic the hub makes again (the
        profile topic): they watch its count, and what they miss is published again."""
        try:
            admin = await self._client()
            cluster_id = str((await admin.describe_cluster())["cluster_id"])
            checked = Checked(cluster_id, new_broker=self.cluster_id is not None and cluster_id != self.cluster_id)
            if checked.new_broker:
                self._count("kafka_broker_changes")
                log.warning(
                    "the Kafka broker at %s is another one (cluster id %s, was %s)%s",
                    self.bootstrap, cluster_id, self.cluster_id,
                    ": the embedded broker restarted empty" if checked.memory_only else "",
                )
            self.cluster_id = cluster_id
            if wanted:
                await self._settle(admin, checked, wanted, broker_counts)
            elif watched:
                existing = await _partition_counts(admin)
                checked.partitions = {t: existing[t] for t in watched if t in existing}
            return checked
        except BaseException:
            await self.close()
            raise

    async def _settle(self, admin: AIOKafkaAdminClient, checked: Checked, wanted: dict[str, int], broker_counts: bool) -> None:
        by_naming = broker_counts and checked.memory_only  # made by naming, taken as they are (see ``check``)
        for attempt in range(REPAIR_ATTEMPTS + 1):
            if attempt:
                await asyncio.sleep(0.05 * attempt)  # a cluster's metadata follows a creation closely, not at once
            existing = await _partition_counts(admin)
            checked.partitions = {t: existing[t] for t in wanted if t in existing}
            missing = {t: n for t, n in wanted.items() if t not in existing}
            wrong = {} if by_naming else {
                t: existing[t] for t, n in wanted.items() if t in existing and existing[t] != n and t not in checked.wrong
            }
            if wrong and not checked.memory_only:
                for topic, actual in wrong.items():
                    checked.wrong[topic] = self._refuse(topic, actual, wanted[topic])
                wrong = {}
            if not missing and not wrong:
                return
            if attempt == REPAIR_ATTEMPTS:
                break
            if wrong:
                # Only on the memory-only embedded broker: what the topic held is published
                # again by its publisher (the outbox and the deliveries are the source of truth).
                log.warning(
                    "topic %s has %s partitions on the embedded broker, not the %s configured: creating it again",
                    ", ".join(sorted(wrong)), ", ".join(str(wrong[t]) for t in sorted(wrong)),
                    ", ".join(str(wanted[t]) for t in sorted(wrong)),
                )
                await admin.delete_topics(sorted(wrong))
                checked.recreated |= set(wrong)
                self._count("kafka_topics_recreated", len(wrong))
            checked.created |= set(missing) - checked.recreated
            if by_naming:
                await _made_by_naming(admin, missing)
            else:
                await _create(admin, self.settings, {t: wanted[t] for t in (*missing, *wrong)})
        raise KafkaError(f"the topics {', '.join(sorted(wanted))} could not be made with the partition counts wanted")

    def _refuse(self, topic: str, actual: int, wanted: int) -> TopicLayoutError:
        error = TopicLayoutError(topic, actual, wanted, layout_fix(self.settings, self.bootstrap, topic, actual, wanted))
        self._count("kafka_topic_layout_errors")
        now = asyncio.get_running_loop().time()
        if now - self._logged.get(topic, -LOG_AGAIN_SECONDS) >= LOG_AGAIN_SECONDS:
            self._logged[topic] = now
            log.error("%s", error)
        return error

    def _count(self, name: str, n: int = 1) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).inc(n)

    async def _client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_options(self.settings, self.bootstrap))
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        return self._admin

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await admin.close()
            except Exception as exc:
                log.debug("closing the Kafka admin client: %s", exc)


class BrokerWatch:
    """Tells a consumer that the broker under it is another one: the cluster id changed (the
    memory-only embedded broker restarted empty). Its place in each partition of the old broker
    means nothing there: if the new partition filled past that place before a fetch came back
    empty, ``rewind_past_the_end`` never sees it and what was published again below it would
    be skipped. So on a change every assigned partition is read again from the start.

    It also watches the partition count of ``topic`` (the consumer's). A group's leader assigns
    the partitions its client sees, and aiokafka's leader can assign from a view taken just
    before a metadata update that it then records as already assigned: when the relay makes the
    topic again with the configured count (the embedded broker restarted empty and made the
    topic with its default of 4 when a consumer asked about it), the new partitions stay
    nobody's for as long as the group's members run, since later metadata refreshes show them
    nothing new. So a changed count raises ``PartitionsChanged``: the caller makes its consumer
    again, which reads the metadata afresh and joins the group again.

    Looked at every ``Topics.interval()`` seconds; a broker that cannot be asked is asked again
    then."""

    def __init__(self, settings: Settings, bootstrap: str, topic: str | None = None) -> None:
        self._topics = Topics(settings, bootstrap)
        self._topic = topic
        self._count: int | None = None  # the topic's partition count at the last look that found it
        self._next = 0.0

    async def look(self, consumer: AIOKafkaConsumer) -> bool:
        """Whether the broker is another one since the last look (the consumer's partitions are
        then read again from the start); raises ``PartitionsChanged`` (see the class)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next:
            return False
        self._next = loop.time() + self._topics.interval()
        try:
            checked = await self._topics.check({}, watched=(self._topic,) if self._topic else ())
        except Exception as exc:  # the broker is away: the consumer itself reconnects
            log.debug("asking the Kafka broker its cluster id: %s: %s", type(exc).__name__, exc)
            return False
        before, count = self._count, checked.partitions.get(self._topic or "")
        if count is not None:  # a topic gone for now is compared, when it is back, with the last count
            self._count = count
        assigned = consumer.assignment()
        if checked.new_broker and assigned:
            log.warning(
                "%s: the broker is another one (cluster id %s); reading from the start",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)), self._topics.cluster_id,
            )
            await consumer.seek_to_beginning(*assigned)
        if None not in (before, count) and before != count:
            raise PartitionsChanged(f"{self._topic} now has {count} partitions on the broker, not {before}: joining the group again")
        return checked.new_broker

    async def close(self) -> None:
        await self._topics.close()


class PartitionsChanged(Exception):
    """The topic a consumer reads has another partition count than when it joined its group."""


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Each topic's partition count, from all topics' metadata: a request naming a topic makes
    it, with its own default count, on the embedded broker."""
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if not t.get("error_code")}


async def rewind_past_the_end(consumer: AIOKafkaConsumer) -> list[Any]:
    """Read again from its beginning every assigned partition whose position is past its end:
    the topic was made again under the consumer (a memory-only broker restarted, or an operator
    re-created it) while the consumer kept its place in the old one. Apache Kafka answers a fetch
    there with "offset out of range" and the reset policy applies; the embedded broker answers
    with nothing, and what is published again to that partition would wait until it passed the
    old place. Consumers are idempotent, so reading a partition again costs only time."""
    rewound = []
    for tp in consumer.assignment():
        end = consumer.highwater(tp)  # as the last fetch answered it
        if end is not None and await consumer.position(tp) > end:
            rewound.append(tp)
    if rewound:
        log.warning(
            "%s: the position is past the end of the partition (the topic was made again); reading it from the start",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(rewound)),
        )
        await consumer.seek_to_beginning(*rewound)
    return rewound


def believed_partitions(client: AIOKafkaProducer | None, topic: str) -> int | None:
    """How many partitions ``client`` believes ``topic`` has (None when it knows nothing of it)."""
    if client is None:
        return None
    partitions = client.client.cluster.partitions_for_topic(topic)
    return len(partitions) if partitions else None
