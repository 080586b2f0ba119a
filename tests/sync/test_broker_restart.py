"""A broker that comes back empty loses nothing: the embedded broker killed and started again
(by its supervisor, or by whatever runs a standalone one), topics made by a consumer's metadata
request with the broker's default partition count, and producers that believed the old layout.

These run with the configured partition counts of production (12 for the profile topic, 3 for
a service's), not the tests' usual 4 and 1: the embedded broker makes a topic it is asked about
with 4 partitions, so only other counts show a stale layout. (Services' topics have the broker's
own count on the embedded broker, whatever is configured; on a cluster, the configured one.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from identity.appkeys import DB
from identity.db.models import Delivery, OutboxEvent, Service
from identity.settings import Settings
from schemas.events import PROFILE_TOPIC, service_topic
from sync import kafka
from sync.broker import EmbeddedBroker, broker_binary, free_port, memory_only
from sync.metrics import SyncMetrics
from sync.relay import REPUBLISH_AFTER, REPUBLISH_CHECK_SECONDS, Relay
from sync.runtime import EMBEDDED, METRICS
from sync.service_topics import ServiceTopics
from tests.support import EMBEDDED_DEFAULT, PRODUCTION_TOPOLOGY, Hub, eventually
from tests.sync.conftest import EXTERNAL_KAFKA, add_member
from tests.sync.helpers import SyncProcess, add_people, change, link_directly, recorded
from tests.sync.receivers import Receivers

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(EXTERNAL_KAFKA), reason="kills and restarts the embedded broker")]

PROFILE_PARTITIONS = Settings.model_fields["kafka_profile_partitions"].default  # 12
SERVICE_PARTITIONS = Settings.model_fields["kafka_service_partitions"].default  # 3
PRODUCTION_PARTITIONS = {"kafka_profile_partitions": PROFILE_PARTITIONS, "kafka_service_partitions": SERVICE_PARTITIONS}
#: How long after its last change the hub may take to deliver it after a restart of the
#: memory-only broker: an event the new broker acknowledged but that was never consumed (the
#: topic made again under it) is published again once it has stayed unconsumed REPUBLISH_AFTER
#: seconds, at the relay's next check, and then consumed and delivered. Counted from the last
#: change, not from the restart: how long streaming the changes takes is the test's own pace.
RECOVERY = REPUBLISH_AFTER + REPUBLISH_CHECK_SECONDS + 30


async def partitions(bootstrap: str, topic: str) -> int | None:
    """The topic's partition count, read without making it (all topics' metadata)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return next((len(t["partitions"]) for t in await admin.describe_topics() if t["topic"] == topic), None)
    finally:
        await admin.close()


async def made_by_a_consumer(bootstrap: str, topic: str) -> int:
    """A consumer subscribes to ``topic`` before anyone made it: its metadata request makes it,
    with the broker's default partition count (what a worker's or a service's consumer does
    when it reconnects to a broker that came back empty before the hub made the topic again)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not (made := consumer.partitions_for_topic(topic)):
            assert asyncio.get_running_loop().time() < deadline, f"{topic} was not made by the consumer's metadata request"
            await consumer._client.force_metadata_update()
        return len(made)
    finally:
        await consumer.stop()


async def made_again_by_hand(bootstrap: str, topic: str, count: int) -> None:
    """What an operator does with ``kafka-topics.sh --delete`` and ``--create``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        await admin.create_topics([NewTopic(topic, count, 1)])
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def cluster_broker() -> AsyncIterator[str]:
    """The same broker software with a cluster id of its own: not the hub's memory-only
    embedded broker, so the hub treats it as an operator's cluster and never re-creates topics."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/", "--cluster-id", "operators-cluster", "--silent"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                assert process.poll() is None and asyncio.get_running_loop().time() < deadline, "the broker did not start"
                await asyncio.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def _has(bootstrap: str, topic: str, count: int) -> Any:
    async def probe() -> bool:
        return await partitions(bootstrap, topic) == count

    return probe


class TopicReader:
    """A member service's consumer of one topic, in its own group, reading from the earliest
    offset and keeping the highest version per ``sub`` (what the integration guide asks)."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
            enable_auto_commit=False, metadata_max_age_ms=kafka.METADATA_MAX_AGE_MS, fetch_max_wait_ms=50,
            # Joins as fast as the tests' workers (see kafka_session_timeout).
            session_timeout_ms=3000, heartbeat_interval_ms=600,
        )
        # What the integration guide asks of a consumer on the embedded broker, which forgets
        # everything when it restarts: read again from the start when the cluster id changes.
        self.watch = kafka.BrokerWatch(Settings(kafka_bootstrap_servers=bootstrap), bootstrap)
        self.versions: dict[str, int] = {}
        self.read: list[tuple[int, int, str, int]] = []  # partition, offset, sub, version: for a failure's message
        self.outbox_ids: set[int] = set()
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                batch = await self.consumer.getmany(timeout_ms=200)
                if await self.watch.look(self.consumer):
                    continue
                if not batch:  # what the integration guide asks after a topic was made again
                    await kafka.rewind_past_the_end(self.consumer)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker went away: the consumer reconnects by itself
                await asyncio.sleep(0.1)
                continue
            async with self.changed:
                for messages in batch.values():
                    for message in messages:
                        headers = dict(message.headers or ())
                        if "outbox-id" in headers:
                            self.outbox_ids.add(int(headers["outbox-id"]))
                        data = json.loads(message.value).get("data", {})
                        if "version" in data:
                            self.read.append((message.partition, message.offset, data["sub"], data["version"]))
                        if "version" in data and data["version"] > self.versions.get(data["sub"], 0):
                            self.versions[data["sub"]] = data["version"]
                self.changed.notify_all()

    async def wait(self, done: Any, timeout: float, what: str) -> None:
        async def reached() -> None:
            async with self.changed:
                await self.changed.wait_for(done)

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            raise AssertionError(f"{what} within {timeout:.0f} s") from None

    def behind(self, final: dict[str, int]) -> str:
        """Who is behind ``final``, and each one's messages as read (partition, offset, version)."""
        lines = []
        for sub, version in sorted(final.items()):
            if self.versions.get(sub, 0) < version:
                seen = [(p, o, v) for p, o, s, v in self.read if s == sub]
                lines.append(f"{sub}: {self.versions.get(sub, 0)} of {version}, read {seen[-6:]}")
        return "\n".join(lines)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()
        await self.watch.close()


async def _all_at(receivers: Receivers, names: tuple[str, ...], final: dict[str, int], deadline: float) -> None:
    for name in names:
        for sub, version in final.items():
            await receivers.wait_for(name, sub, version, timeout=max(0.1, deadline - asyncio.get_running_loop().time()))


async def _stream(hub: Hub, subs: list[str], final: dict[str, int], label: str, count: int, under_way: asyncio.Event | None = None) -> None:
    """``count`` changes, round robin over ``subs``, about 50 a second (a steady stream);
    ``under_way`` is set once a quarter of them are made."""
    for i in range(count):
        sub = subs[i % len(subs)]
        final[sub] = await change(hub, sub, family_name=f"{label}{i}")
        if under_way is not None and i == count // 4:
            under_way.set()
        await asyncio.sleep(0.02)  # pacing the load, not waiting for anything


# -- the topics' layout ----------------------------------------------------------------------


async def test_a_topic_made_with_the_brokers_default_count_is_made_again_on_the_embedded_broker(tmp_path: Path) -> None:
    async with EmbeddedBroker() as broker:
        assert memory_only(broker.cluster_id)
        settings = Settings(data_dir=tmp_path, kafka_bootstrap_servers=broker.bootstrap)
        assert await made_by_a_consumer(broker.bootstrap, PROFILE_TOPIC) != PROFILE_PARTITIONS
        metrics = SyncMetrics()
        topics = kafka.Topics(settings, broker.bootstrap, metrics)
        try:
            checked = await topics.check({PROFILE_TOPIC: PROFILE_PARTITIONS, "onesignin.service.x.v1": SERVICE_PARTITIONS})
            assert checked.recreated == {PROFILE_TOPIC} and checked.created == {"onesignin.service.x.v1"}
            assert not checked.wrong and not checked.new_broker
            assert await partitions(broker.bootstrap, PROFILE_TOPIC) == PROFILE_PARTITIONS
            assert await partitions(broker.bootstrap, "onesignin.service.x.v1") == SERVICE_PARTITIONS
            again = await topics.check({PROFILE_TOPIC: PROFILE_PARTITIONS})
            assert not (again.recreated or again.created or again.new_broker)
            assert metrics.kafka_topics_recreated._value.get() == 1
        finally:
            await topics.close()


async def test_services_topics_have_the_embedded_brokers_own_count_and_the_configured_one_on_a_cluster(tmp_path: Path) -> None:
    """A service's topic has the partition count a consumer's metadata request would give it on
    the embedded broker, whoever makes it first, so its count never changes under a service's
    consumers when the broker restarts; on a cluster it is made with the configured count."""
    service = "onesignin.service.x.v1"
    async with EmbeddedBroker() as broker:
        settings = Settings(data_dir=tmp_path, kafka_bootstrap_servers=broker.bootstrap, kafka_service_partitions=SERVICE_PARTITIONS)
        own = await made_by_a_consumer(broker.bootstrap, "another")
        assert own != SERVICE_PARTITIONS
        topics = kafka.Topics(settings, broker.bootstrap)
        try:
            checked = await topics.check({service: SERVICE_PARTITIONS}, broker_counts=True)
            assert checked.created == {service} and checked.partitions == {service: own}
            again = await topics.check({service: SERVICE_PARTITIONS}, broker_counts=True)
            assert not (again.created or again.recreated or again.wrong) and again.partitions == {service: own}
        finally:
            await topics.close()
    async with cluster_broker() as bootstrap:
        settings = Settings(data_dir=tmp_path, kafka_bootstrap_servers=bootstrap, kafka_service_partitions=SERVICE_PARTITIONS)
        topics = kafka.Topics(settings, bootstrap)
        try:
            checked = await topics.check({service: SERVICE_PARTITIONS}, broker_counts=True)
        finally:
            await topics.close()
        assert checked.partitions == {service: SERVICE_PARTITIONS}


async def test_on_a_cluster_a_topic_with_the_wrong_count_is_refused_with_the_command_that_fixes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster_broker() as bootstrap:
        settings = Settings(data_dir=tmp_path, kafka_bootstrap_servers=bootstrap)
        made = await made_by_a_consumer(bootstrap, PROFILE_TOPIC)
        metrics = SyncMetrics()
        topics = kafka.Topics(settings, bootstrap, metrics)
        try:
            with caplog.at_level(logging.ERROR, logger="sync.kafka"):
                checked = await topics.check({PROFILE_TOPIC: PROFILE_PARTITIONS})
        finally:
            await topics.close()
        error = checked.wrong[PROFILE_TOPIC]
        assert error.fix == f"kafka-topics.sh --bootstrap-server {bootstrap} --alter --topic {PROFILE_TOPIC} --partitions {PROFILE_PARTITIONS}"
        assert error.fix in caplog.text and f"has {made} partitions, not the {PROFILE_PARTITIONS} configured" in caplog.text
        assert metrics.kafka_topic_layout_errors._value.get() == 1
        assert await partitions(bootstrap, PROFILE_TOPIC) == made  # left as it is
        # More partitions than configured cannot be undone by Kafka: the setting is named.
        assert "ONESIGNIN_KAFKA_SERVICE_PARTITIONS=4" in kafka.layout_fix(settings, bootstrap, "onesignin.service.x.v1", 4, 3)


class TestRelay:
    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        return settings_overrides | PRODUCTION_PARTITIONS | {"sync_in_process": False}

    async def test_on_a_cluster_nothing_is_published_to_a_profile_topic_with_the_wrong_count(self, hub: Hub) -> None:
        sub = (await add_people(hub, 1))[0]
        await change(hub, sub, family_name="Waiting")
        async with cluster_broker() as bootstrap:
            topic = hub.settings.kafka_topic_prefix + PROFILE_TOPIC
            await made_by_a_consumer(bootstrap, topic)
            relay = Relay(hub.settings, hub.app[DB], bootstrap, idempotent=False, metrics=SyncMetrics())
            try:
                with pytest.raises(kafka.TopicLayoutError):
                    await relay._connect()
                async with hub.app[DB]() as db:
                    assert await db.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_not(None))) == 0
                # The operator runs what the log said (here: the topic made again with 12).
                admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
                await admin.start()
                await admin.delete_topics([topic])
                await admin.create_topics([NewTopic(topic, PROFILE_PARTITIONS, 1)])
                await admin.close()
                await relay._connect()
                assert await relay.publish_batch() >= 1
            finally:
                await relay._disconnect()
                await relay.topics.close()

    async def test_the_relay_publishes_where_consumers_read_after_the_broker_came_back_empty(self, hub: Hub) -> None:
        """The relay's producer believed 12 partitions; the broker came back empty, and a
        consumer's metadata request made the topic with 4. Every event published after that
        reaches the consumer (the topic is made again with 12, the producer made again)."""
        topic = hub.settings.kafka_topic_prefix + PROFILE_TOPIC
        subs = await add_people(hub, 36)
        broker = EmbeddedBroker(supervise=False)
        await broker.start()
        relay = Relay(hub.settings, hub.app[DB], broker.bootstrap, idempotent=False, metrics=SyncMetrics())
        running = asyncio.create_task(relay.run())
        reader: TopicReader | None = None
        restarted: EmbeddedBroker | None = None
        try:
            for sub in subs:
                await change(hub, sub, family_name="Before")
            async with hub.app[DB]() as db:
                before = set(await db.scalars(select(OutboxEvent.id)))

            async def all_published() -> bool:
                async with hub.app[DB]() as db:
                    waiting = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
                    return await db.scalar(waiting) == 0

            # Published, so the relay made the topic (with its 12 partitions) before this
            # consumer's first metadata request could make it with the broker's default.
            await eventually(all_published, timeout=30, what="the events before the restart published")
            first = TopicReader(broker.bootstrap, topic, "before")
            await first.start()
            try:  # published to the 12 partitions, as the producer now believes them
                await first.wait(lambda: before <= first.outbox_ids, 30, "the events before the restart were not read")
            finally:
                await first.stop()

            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait()
            restarted = EmbeddedBroker(port=broker.port, supervise=False)
            await restarted.start()
            # Usually before the relay's next check, so with the broker's default count.
            await made_by_a_consumer(restarted.bootstrap, topic)
            for sub in subs:
                await change(hub, sub, family_name="After")
            async with hub.app[DB]() as db:
                after = set(await db.scalars(select(OutboxEvent.id).where(OutboxEvent.id.not_in(before))))
            # The member's consumer joins once the relay made the topic again with its count
            # (one that joined the short-lived layout is a matter for the consumer, not the relay).
            await eventually(_has(restarted.bootstrap, topic, PROFILE_PARTITIONS), timeout=45, what="the topic made again with its 12 partitions")
            reader = TopicReader(restarted.bootstrap, topic, "after")
            await reader.start()
            await reader.wait(
                lambda: after <= reader.outbox_ids, 45,
                f"events published after the restart never reached the consumer ({len(after - reader.outbox_ids)} of {len(after)})",
            )
            assert await partitions(restarted.bootstrap, topic) == PROFILE_PARTITIONS
            assert relay.metrics.kafka_broker_changes._value.get() >= 1
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            if reader is not None:
                await reader.stop()
            await broker.stop()
            if restarted is not None:
                await restarted.stop()


async def test_a_workers_producer_is_made_again_when_its_service_topic_is_made_again(hub: Hub, broker: EmbeddedBroker) -> None:
    """The worker's producer believed the broker's count of a service's topic; the topic was
    deleted and made with 12 partitions by hand. The check takes it as it is and replaces the
    producer: what is sent next lands in partitions that exist, and is read."""
    out = ServiceTopics(hub.settings, hub.app[DB], broker.bootstrap, idempotent=False, metrics=SyncMetrics())
    topic = hub.settings.kafka_topic_prefix + service_topic("svc")
    reader: TopicReader | None = None
    try:
        assert (await out.publish("svc", "first", "{}", "m0")).result == "ok"
        believed = out.producer
        assert kafka.believed_partitions(believed, topic) not in (None, 12)
        await made_again_by_hand(broker.bootstrap, topic, 12)
        await out.watch(["svc"])
        assert out.producer is not believed  # replaced: it believed another layout
        assert await partitions(broker.bootstrap, topic) == 12  # taken as it is
        reader = TopicReader(broker.bootstrap, topic, "svc-reader")
        await reader.start()
        keys = [f"sub-{i}" for i in range(36)]  # spread over every partition
        for i, key in enumerate(keys):
            body = json.dumps({"data": {"sub": key, "version": i + 1}})
            assert (await out.publish("svc", key, body, f"m{i + 1}")).result == "ok"
        await reader.wait(lambda: set(keys) <= set(reader.versions), 30, "messages sent after the topic was made again were not read")
        assert {p for p, *_ in reader.read} == set(range(12))
    finally:
        if reader is not None:
            await reader.stop()
        await out.close()


async def test_a_service_topic_a_consumer_made_is_used_as_it_is_on_the_embedded_broker(hub: Hub, broker: EmbeddedBroker) -> None:
    """A service's consumer made its topic (the broker's own count, not the configured 3) and
    read what another worker's producer sent there. Made again, the topic would put the
    consumer's place inside the new one, above what is published next, which it would skip (it
    did when two workers made it again at once). So on the embedded broker the worker takes a
    service's topic as it is, and everything it sends lands after the consumer's place."""
    settings = hub.settings.model_copy(update={"kafka_service_partitions": SERVICE_PARTITIONS})
    out = ServiceTopics(settings, hub.app[DB], broker.bootstrap, idempotent=False, metrics=SyncMetrics())
    topic = settings.kafka_topic_prefix + service_topic("svc")
    keys = [f"sub-{i}" for i in range(24)]  # over every partition
    reader = TopicReader(broker.bootstrap, topic, "svc-reader")
    other = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        made = await made_by_a_consumer(broker.bootstrap, topic)
        assert made != SERVICE_PARTITIONS
        await reader.start()
        await other.start()
        for i, key in enumerate(keys):
            await other.send_and_wait(topic, json.dumps({"data": {"sub": key, "version": 1}}).encode(), key=key.encode())
        await reader.wait(lambda: set(keys) <= set(reader.versions), 30, "the first messages were not read")
        await reader.consumer.commit()  # as a service does with what it has handled
        assigned = reader.consumer.assignment()
        places = {tp.partition: await reader.consumer.position(tp) for tp in assigned}
        reader.consumer.pause(*assigned)  # what is sent next is all there before the consumer fetches again
        for i, key in enumerate(keys):
            body = json.dumps({"data": {"sub": key, "version": 2}})
            assert (await out.publish("svc", key, body, f"m{i}")).result == "ok"
        reader.consumer.resume(*assigned)
        await reader.wait(
            lambda: all(reader.versions[k] == 2 for k in keys), 30, f"what the worker sent was not all read: {reader.versions}"
        )
        below = [(p, o, k) for p, o, k, v in reader.read if v == 2 and o < places[p]]
        assert not below, f"published below the consumer's place (partition, offset, sub): {below}"
        assert await partitions(broker.bootstrap, topic) == made
    finally:
        await reader.stop()
        await other.stop()
        await out.close()


async def test_a_workers_first_look_at_a_memory_only_broker_queues_again_what_the_topics_held(
    hub: Hub, receivers: Receivers, broker: EmbeddedBroker
) -> None:
    """The hub restarted with its memory-only broker: the person's snapshot reached the
    service's topic on the broker before, and on the new one a service's consumer asked for the
    topic first, so the worker finds it there and does not create it. Its first look at that
    broker still queues the delivery again, once; a look that fails before the delivery is
    queued leaves it to the next look. Another worker's first look at the same broker queues
    nothing more: the broker was dealt with."""
    member = await add_member(hub, receivers, "portal", webhook=False, topic=True)
    sub = (await add_people(hub, 1))[0]
    await link_directly(hub, [sub], member.rp.client_id)
    await recorded(hub, member.rp.client_id, sub, 1)  # on the broker before

    async def generation() -> int:
        async with hub.app[DB]() as db:
            return await db.scalar(
                select(Delivery.generation).join(Service, Service.id == Delivery.service_id)
                .where(Service.client_id == member.rp.client_id, Delivery.channel == "topic")
            )

    before = await generation()
    topic = hub.settings.kafka_topic_prefix + service_topic(member.rp.client_id)
    async with EmbeddedBroker() as restarted:
        await made_by_a_consumer(restarted.bootstrap, topic)
        out = ServiceTopics(hub.settings, hub.app[DB], restarted.bootstrap, idempotent=False, metrics=SyncMetrics())
        queue_again = out._resend

        async def database_gone(client_ids: set[str], broker: str | None) -> tuple[int, bool]:
            out._resend = queue_again  # once
            raise OperationalError("UPDATE deliveries", {}, ConnectionResetError("the database went away"))

        out._resend = database_gone  # type: ignore[method-assign]
        try:
            with pytest.raises(OperationalError):
                await out.watch([member.rp.client_id])
            assert await generation() == before
            await out.watch([member.rp.client_id])
            assert await generation() == before + 1
            await out.watch([member.rp.client_id])
            assert await generation() == before + 1  # once
            await recorded(hub, member.rp.client_id, sub, 1)  # sent again by the hub's worker (only what was sent is queued again)
            other = ServiceTopics(hub.settings, hub.app[DB], restarted.bootstrap, idempotent=False, metrics=SyncMetrics())
            try:
                await other.watch([member.rp.client_id])  # another worker's first look
            finally:
                await other.close()
            assert await generation() == before + 1

            # One topic lost (made again by hand with 12 partitions under a producer that believed
            # the broker's count), and the first look's queuing fails: the next look does it.
            assert (await out.publish(member.rp.client_id, sub, "{}", "m1")).result == "ok"
            await made_again_by_hand(restarted.bootstrap, topic, 12)
            out._resend = database_gone  # type: ignore[method-assign]
            with pytest.raises(OperationalError):
                await out.watch([member.rp.client_id])
            assert await generation() == before + 1
            await out.watch([member.rp.client_id])
            assert await generation() == before + 2
            await out.watch([member.rp.client_id])
            assert await generation() == before + 2
        finally:
            await out.close()


# -- the supervisor --------------------------------------------------------------------------


async def test_the_embedded_broker_killed_is_started_again_on_its_port_and_a_stopped_one_is_not() -> None:
    restarts: list[int] = []
    broker = EmbeddedBroker(on_restart=lambda: restarts.append(1))
    await broker.start()
    try:
        first, port = broker.cluster_id, broker.port
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGKILL)
        await asyncio.wait_for(broker.restarted.wait(), 30)
        assert broker.port == port and broker.cluster_id != first and memory_only(broker.cluster_id)
        assert broker.restarts == 1 and restarts == [1]
        # It serves again, empty.
        assert await partitions(broker.bootstrap, PROFILE_TOPIC) is None
        process = broker.process
    finally:
        await broker.stop()
    assert process is not None and process.poll() is not None
    assert broker.restarts == 1 and broker.process is None  # stopped on purpose: not started again


@EMBEDDED_DEFAULT
class TestEmbeddedBrokerInServe:
    """`onesignin serve` with no Kafka configured: the broker is its own child process."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        from tests.sync.conftest import FAST_SYNC

        return FAST_SYNC | PRODUCTION_PARTITIONS | {"kafka_bootstrap_servers": None, "kafka_enable_idempotence": True}

    async def test_a_killed_embedded_broker_is_started_again_and_every_change_arrives(self, hub: Hub, receivers: Receivers) -> None:
        names = ("store", "forum")
        subs = await add_people(hub, 36)
        for name in names:
            member = await add_member(hub, receivers, name)
            await link_directly(hub, subs, member.rp.client_id)
        loop = asyncio.get_running_loop()
        await _all_at(receivers, names, dict.fromkeys(subs, 1), loop.time() + 60)
        embedded = hub.app[EMBEDDED]
        first = embedded.cluster_id
        final: dict[str, int] = {}
        await _stream(hub, subs, final, "Before", 36)
        embedded.restarted.clear()
        assert embedded.process is not None
        os.kill(embedded.process.pid, signal.SIGKILL)
        await asyncio.wait_for(embedded.restarted.wait(), 30)
        assert embedded.cluster_id != first
        await _stream(hub, subs, final, "After", 72)
        await _all_at(receivers, names, final, loop.time() + RECOVERY)
        for name in names:
            for sub, version in final.items():
                assert receivers[name].version(sub) == version
        assert hub.app[METRICS].embedded_broker_restarts._value.get() == 1


# -- the production topology -----------------------------------------------------------------


@PRODUCTION_TOPOLOGY
class TestStandaloneBrokerKilled:
    """`serve --no-sync`, `onesignin relay` and two `onesignin worker`s sharing a broker that
    something else runs (and restarts), with the default partition counts."""

    @pytest.fixture
    async def broker(self) -> AsyncIterator[EmbeddedBroker]:
        # Run like a standalone broker under a service manager: restarted from outside.
        async with EmbeddedBroker(supervise=False) as running:
            yield running

    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        return settings_overrides | PRODUCTION_PARTITIONS | {"sync_in_process": False}

    async def test_broker_killed_and_restarted_while_changes_stream_delivers_every_change(
        self, hub: Hub, receivers: Receivers, broker: EmbeddedBroker, tmp_path: Path
    ) -> None:
        names = ("store", "forum", "portal")
        subs = await add_people(hub, 60)
        members = {}
        for name in names:
            members[name] = await add_member(hub, receivers, name, topic=name == "portal")
            await link_directly(hub, subs, members[name].rp.client_id)
        processes = [SyncProcess("relay", hub, tmp_path), SyncProcess("worker", hub, tmp_path), SyncProcess("worker", hub, tmp_path)]
        topic = hub.settings.kafka_topic_prefix + service_topic(members["portal"].rp.client_id)
        reader = TopicReader(broker.bootstrap, topic, "portal-reader")
        restarted: EmbeddedBroker | None = None
        loop = asyncio.get_running_loop()
        try:
            for p in processes:
                await p.start()
            await _all_at(receivers, names, dict.fromkeys(subs, 1), loop.time() + 90)
            await reader.start()
            final: dict[str, int] = {}
            await _stream(hub, subs, final, "Before", 60)
            # kill -9, and the same broker started again on its port at once, while changes stream.
            assert broker.process is not None
            under_way = asyncio.Event()
            streaming = asyncio.create_task(_stream(hub, subs, final, "During", 150, under_way))
            await under_way.wait()
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait()
            restarted = EmbeddedBroker(port=broker.port, supervise=False)
            await restarted.start()
            await streaming
            streamed_at = loop.time()
            await _all_at(receivers, names, final, streamed_at + RECOVERY)
            try:
                await reader.wait(
                    lambda: all(reader.versions.get(s, 0) >= v for s, v in final.items()),
                    max(0.1, streamed_at + RECOVERY - loop.time()),
                    "the portal's topic did not reach every person's last version",
                )
            except AssertionError as error:
                logs = "\n".join(line for p in processes for line in p.log.read_text().splitlines() if "WARNING" in line or "ERROR" in line)
                raise AssertionError(f"{error}\n{reader.behind(final)}\n{logs}") from None
            for name in names:
                for sub, version in final.items():
                    assert receivers[name].version(sub) == version
        finally:
            await reader.stop()
            for p in processes:
                await p.stop()
            if restarted is not None:
                await restarted.stop()


async def test_a_consumer_past_the_end_of_a_topic_made_again_reads_it_from_the_start() -> None:
    """A topic deleted and made again under a group member that kept its place (10) in the old
    one: the embedded broker answers its fetches with nothing, so what is published to the new
    topic (3 messages) would never be read; ``rewind_past_the_end`` reads it from the start."""
    async with EmbeddedBroker() as broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        consumer = AIOKafkaConsumer(
            "made-again", bootstrap_servers=broker.bootstrap, group_id="member", auto_offset_reset="earliest",
            enable_auto_commit=False, session_timeout_ms=3000, heartbeat_interval_ms=600,
        )
        try:
            await admin.create_topics([NewTopic("made-again", 1, 1)])
            await producer.start()
            for i in range(10):
                await producer.send_and_wait("made-again", b"old %d" % i, partition=0)
            await consumer.start()
            old: list[bytes] = []
            while len(old) < 10:
                old += [m.value for ms in (await consumer.getmany(timeout_ms=200)).values() for m in ms]
            await admin.delete_topics(["made-again"])
            await admin.create_topics([NewTopic("made-again", 1, 1)])
            await producer.stop()
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await producer.start()
            for i in range(3):
                await producer.send_and_wait("made-again", b"new %d" % i, partition=0)
            tp = TopicPartition("made-again", 0)

            async def stalled() -> bool:  # the barrier: a fetch answered the new end, and nothing came
                assert not await consumer.getmany(tp, timeout_ms=200)
                return consumer.highwater(tp) == 3

            await eventually(stalled, what="a fetch of the new topic")
            assert await consumer.position(tp) == 10
            assert await kafka.rewind_past_the_end(consumer) == [tp]
            new: list[bytes] = []
            while len(new) < 3:
                new += [m.value for ms in (await consumer.getmany(timeout_ms=200)).values() for m in ms]
            assert new == [b"new 0", b"new 1", b"new 2"]
            assert await kafka.rewind_past_the_end(consumer) == []  # at the end now, not past it
        finally:
            await consumer.stop()
            await producer.stop()
            await admin.close()


async def test_a_group_whose_topic_was_made_again_with_more_partitions_joins_again_and_reads_them_all() -> None:
    """The profile topic made by a metadata request with the embedded broker's default of 4
    partitions, a worker assigned those 4, then the relay making the topic again with 12: the
    worker's client soon sees 12, but its group keeps the assignment of 4 (aiokafka took the new
    count as assigned), so partitions 4 to 11 are nobody's and what is published there is never
    consumed. The broker watch sees the count change; a consumer made again is assigned all 12."""
    topic = "profile-made-again"
    settings = Settings(kafka_session_timeout=3.0)
    async with EmbeddedBroker() as broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        watch = kafka.BrokerWatch(settings, broker.bootstrap, topic)
        consumer = kafka.consumer(settings, broker.bootstrap, "workers")
        again: AIOKafkaConsumer | None = None
        try:
            await admin.create_topics([NewTopic(topic, 4, 1)])
            consumer.subscribe([topic])
            await consumer.start()

            async def assigned() -> set[int]:
                await consumer.getmany(timeout_ms=100)
                return {tp.partition for tp in consumer.assignment()}

            assert await eventually(assigned, what="the first assignment") == {0, 1, 2, 3}
            assert not await watch.look(consumer)  # its first look: the count is 4

            await admin.delete_topics([topic])
            await admin.create_topics([NewTopic(topic, 12, 1)])

            async def changed() -> bool:
                await consumer.getmany(timeout_ms=100)
                try:
                    await watch.look(consumer)
                except kafka.PartitionsChanged as error:
                    assert "now has 12 partitions on the broker, not 4" in str(error)
                    return True
                return False

            await eventually(changed, what="the new partition count seen")
            assert len(consumer.assignment()) == 4  # what the group would keep

            await consumer.stop()
            again = kafka.consumer(settings, broker.bootstrap, "workers")
            again.subscribe([topic])
            await again.start()

            async def all_assigned() -> int:
                await again.getmany(timeout_ms=100)
                return len(again.assignment())

            assert await eventually(all_assigned, what="all 12 partitions assigned") == 12
        finally:
            await consumer.stop()
            if again is not None:
                await again.stop()
            await watch.close()
            await admin.close()
