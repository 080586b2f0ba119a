"""Services' own topics, as a worker publishes to them: one producer per worker process, and
each topic checked on the broker (``kafka.Topics``) before it is first used, after a failed
send, and every few seconds.

What a worker knows of the broker is forgotten as soon as it may be wrong: after a failed send
the producer is made again (new connections, metadata read afresh), and when the broker turns
out to be another one (a new cluster id), or the producer believed another partition count than
the topic has, the producer is replaced before anything else is sent. On the memory-only
embedded broker, messages it acknowledged may then be gone (restarted, it acknowledges messages
for topics and partitions it no longer has), and so may those of a topic the worker had to
create: every delivery already made to those topics is queued again, as a snapshot of the
person's current state, so each service's topic ends up holding everyone's latest version. A
memory-only broker nobody has dealt with yet counts as a restart (it may have restarted while
the workers were down): the first worker to look at it queues every topic's deliveries again,
once for all of them (``settled_brokers`` names the broker, by its cluster id, in the same
transaction), and a look that failed before the deliveries were queued again leaves them to the
next one. A service's consumer that keeps the highest version per ``sub`` ignores what it
already had.

On the embedded broker a service's topic has the broker's own partition count, whoever makes it
(the worker, or a service's consumer asking about it first), and is never made again under the
consumers that keep their place in it (``kafka.Topics.check``). On any other cluster, a topic
with the wrong partition count is left alone and nothing is published to it: its deliveries are
retried on the schedule while the log (and the ``onesignin_kafka_topic_layout_errors`` counter)
say how to fix it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity.db.models import ACTIVE, Delivery, Service, SettledBroker, utcnow
from identity.db.units import whole
from identity.db.upsert import ensure_row
from identity.settings import Settings
from schemas.events import service_topic
from sync import kafka, webhooks
from sync.metrics import SyncMetrics

log = logging.getLogger(__name__)


async def resend_topic_deliveries(db: AsyncSession, client_ids: Iterable[str] | None, now: dt.datetime) -> int:
    """Queue again, due now, every delivery already made to these services' topics (every
    service's when ``client_ids`` is None), as a snapshot of the person's current state; return
    how many. For a broker that lost what it held. A send of one of them in flight now does not
    settle it (its generation is older)."""
    d = Delivery.__table__.c
    statement = update(Delivery.__table__).where(d.channel == "topic", d.state == ACTIVE, d.delivered_version > 0)
    if client_ids is not None:
        statement = statement.where(d.service_id.in_(select(Service.id).where(Service.client_id.in_(list(client_ids)))))
    result = await db.execute(
        statement.values(
            delivered_version=0,
            snapshot=True,
            attempts=0,
            failing_since=None,
            first_pending_at=func.coalesce(d.first_pending_at, now),
            next_attempt_at=now,
            generation=d.generation + 1,
        )
    )
    return result.rowcount


#: The ``settled_brokers`` row of services' topics.
SETTLED_AS = "service-topics"


async def settle_broker(db: AsyncSession, cluster_id: str, now: dt.datetime) -> bool:
    """Whether the memory-only broker ``cluster_id`` is this caller's to deal with: no one has
    yet. It is then named settled in ``db``'s transaction, which the caller commits with what it
    did (the row stays locked until then, so two workers never both take it)."""
    await ensure_row(db, SettledBroker, name=SETTLED_AS, cluster_id="", settled_at=now)
    settled = await db.scalar(select(SettledBroker.cluster_id).where(SettledBroker.name == SETTLED_AS).with_for_update())
    if settled == cluster_id:
        return False
    await db.execute(update(SettledBroker).where(SettledBroker.name == SETTLED_AS).values(cluster_id=cluster_id, settled_at=now))
    return True


class ServiceTopics:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        bootstrap: str,
        *,
        idempotent: bool,
        metrics: SyncMetrics,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.bootstrap = bootstrap
        self.idempotent = idempotent
        self.topics = kafka.Topics(settings, bootstrap, metrics)
        self.producer: AIOKafkaProducer | None = None
        self.ready: set[str] = set()  # checked on the current broker (see ``kafka.Topics.check``)
        # The memory-only broker whose loss of every topic this process has dealt with (queued
        # every delivery made to them again): none yet, so the first look at one does it.
        self.settled: str | None = None
        self.owed: set[str] = set()  # topics found lost whose deliveries could not be queued again yet
        self.wrong: dict[str, kafka.TopicLayoutError] = {}
        self.client_ids: dict[str, str] = {}  # topic to the service it belongs to
        self._renew = False  # a send failed: the next one makes a new producer
        self._lock = asyncio.Lock()  # one check at a time; producers made one at a time
        self._closing: set[asyncio.Task[None]] = set()

    def topic(self, client_id: str) -> str:
        name = self.settings.kafka_topic_prefix + service_topic(client_id)
        self.client_ids[name] = client_id
        return name

    async def publish(self, client_id: str, key: str, body: str, mid: str, *, request_id: str | None = None) -> webhooks.Outcome:
        """Produce ``body`` to the service's topic, keyed by ``key``, with a ``webhook-id`` (and
        the ``request-id`` of the hub request that caused it)."""
        headers = [("webhook-id", mid.encode()), ("content-type", b"application/json")]
        if request_id:
            headers.append(("request-id", request_id.encode()))
        topic = self.topic(client_id)
        producer: AIOKafkaProducer | None = None
        try:
            if topic not in self.ready and topic not in self.wrong:
                async with self._lock:
                    if topic not in self.ready:
                        await self._check([topic])
            if topic in self.wrong:
                return webhooks.Outcome("retry", kafka.TopicLayoutError.public)
            # Taken after the check, which may have replaced it.
            producer = await self._producer()
            await asyncio.wait_for(
                producer.send_and_wait(
                    topic,
                    value=body.encode(),
                    key=key.encode(),
                    headers=headers,
                ),
                self.settings.webhook_timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Nothing known of the broker outlives an error: the topic is checked again before
            # the next send to it, and that send gets a new producer.
            self.ready.discard(topic)
            if producer is None or producer is self.producer:  # not one already replaced
                self._renew = True
            # The service may read this error: its type only, no broker addresses.
            log.warning("sync: producing to %s failed: %s: %s", topic, type(exc).__name__, exc)
            return webhooks.Outcome("retry", f"Kafka: {type(exc).__name__}")
        return webhooks.Outcome("ok")

    async def watch(self, client_ids: Iterable[str]) -> None:
        """Check the topics of these services, and those already in use (the periodic check)."""
        async with self._lock:
            await self._check([self.topic(c) for c in client_ids])

    def interval(self) -> float:
        return self.topics.interval()

    async def _check(self, topics: list[str]) -> None:
        wanted = dict.fromkeys([*self.ready, *self.wrong, *topics], self.settings.kafka_service_partitions)
        try:
            checked = await self.topics.check(wanted, broker_counts=True)
        except BaseException:
            self.ready.clear()
            raise
        stale = {t for t, n in checked.partitions.items() if kafka.believed_partitions(self.producer, t) not in (None, n)}
        # A memory-only broker this process has not dealt with yet: one that restarted, or the
        # first this process sees, which may have started empty while it was down (with the hub,
        # or on its own), and whose topics a service's consumer may have made again by now.
        everything = checked.memory_only and checked.cluster_id != self.settled
        if everything or checked.new_broker or stale:
            # Before anything is queued again: no send after this uses what it believed.
            self._replace_producer()
        if checked.memory_only:
            lost = {t for t in wanted if checked.lost(t)} | stale | self.owed
            if everything or lost:
                clients = {self.client_ids[t] for t in lost}
                try:
                    again, every = await whole(self._resend(clients, checked.cluster_id if everything else None))
                except BaseException:
                    # What showed them lost (a replaced producer's belief, a topic just made) is
                    # gone after this look: the next one queues them from here (and every topic
                    # again while ``settled`` is not this broker).
                    self.owed |= lost
                    self.ready.clear()
                    raise
                self.owed.clear()
                if again:
                    log.warning(
                        "sync: %s deliveries to %s may be lost with the embedded broker's topics; sending them again",
                        again, "every service's topic" if every else ", ".join(sorted(lost)),
                    )
            # Only once they are queued again: a check that failed on the way does it again.
            self.settled = checked.cluster_id
        self.wrong = checked.wrong
        self.ready = set(wanted) - set(checked.wrong)

    async def _resend(self, client_ids: set[str], broker: str | None) -> tuple[int, bool]:
        """Queue again the deliveries made to these services' topics, or, when the memory-only
        broker ``broker`` is this worker's to settle (no other worker has), to every service's
        topic; return how many, and whether every topic's were."""
        async with self.sessions.begin() as db:
            now = utcnow()
            every = broker is not None and await settle_broker(db, broker, now)
            if not every and not client_ids:
                return 0, False
            return await resend_topic_deliveries(db, None if every else client_ids, now), every

    async def _producer(self) -> AIOKafkaProducer:
        if self._renew:
            self._renew = False
            self._replace_producer()
        producer = self.producer
        if producer is not None:
            return producer
        async with self._lock:
            if self.producer is None:
                producer = kafka.producer(self.settings, self.bootstrap, idempotent=self.idempotent)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self.producer = producer
            return self.producer

    def _replace_producer(self) -> None:
        """The next send makes a new producer; the old one finishes what it has in hand."""
        old, self.producer = self.producer, None
        if old is not None:
            task = asyncio.create_task(self._stop(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _stop(producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()
        except Exception as exc:
            log.debug("sync: closing a replaced producer: %s", exc)

    async def close(self) -> None:
        self._replace_producer()
        for task in list(self._closing):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.topics.close()
