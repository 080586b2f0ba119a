"""The outbox relay: publishes outbox rows, in ``id`` order, to Kafka, keyed by ``sub``.

One relay publishes at a time, however many run: on Postgres each batch runs in a transaction
holding an advisory lock (released if the process dies); on SQLite a lease row with an expiry
does the same. A batch is marked published only after the broker acknowledged every message
(acks=all), so while Kafka is down rows wait and the relay retries with backoff. A crash between
the acknowledgement and the commit republishes that batch: delivery is at least once, and the
consumers are idempotent (state-based deliveries keyed by version).

Before publishing, and every few seconds after, the relay checks the profile topic
(``kafka.Topics``): created when missing, re-created on the embedded broker when its partition
count is wrong, refused on a cluster (nothing is published until an operator fixes it). When
what was published may be gone (the broker is another one, the topic was just made, or the
producer was publishing to partitions the broker no longer has) the producer is made again and
every event published but not yet consumed is published again."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity import outbox
from identity.db import dialect
from identity.db.engine import plan_queue_reads
from identity.db.locks import AdvisoryLock, try_take
from identity.db.models import Lease, OutboxEvent, utcnow
from identity.db.units import whole
from identity.settings import Settings
from schemas.events import PROFILE_TOPIC
from sync import kafka
from sync.backoff import Backoff
from sync.metrics import SyncMetrics

log = logging.getLogger(__name__)

LEASE_NAME = "outbox-relay"
LEASE_SECONDS = 30
LEASE_MARGIN = 2.0  # seconds of the lease kept for marking a batch published
CLEANUP_SECONDS = 300
REPUBLISH_AFTER = 30.0  # seconds an event may stay unconsumed on a memory-only broker
REPUBLISH_WINDOW = 600.0  # how far back each check looks (earlier checks saw what is older)
REPUBLISH_CHECK_SECONDS = 10.0
MAX_BACKOFF = 30.0


class LeaseRunningOut(Exception):
    """The broker was too slow to acknowledge a batch within the relay's SQLite lease."""


async def unpublish_unconsumed(db: AsyncSession, *, since: dt.datetime | None = None, before: dt.datetime | None = None) -> int:
    """Make events published (after ``since``, before ``before``) but never consumed
    unpublished again, for the relay to publish them again; return how many. For a broker that
    lost them (the memory-only broker restarted, a topic re-created); consumers are idempotent."""
    conditions = [OutboxEvent.published_at.is_not(None), OutboxEvent.consumed_at.is_(None)]
    if since is not None:
        conditions.append(OutboxEvent.published_at > since)
    if before is not None:
        conditions.append(OutboxEvent.published_at < before)
    return (await db.execute(update(OutboxEvent).where(*conditions).values(published_at=None))).rowcount


class Relay:
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
        self.metrics = metrics
        self.holder = uuid.uuid4().hex
        self.producer: AIOKafkaProducer | None = None
        # Without idempotence (the embedded, memory-only broker), events published but never
        # consumed after a while are published again: restarted empty, that broker loses what it
        # held, and it even acknowledges messages for a topic that it no longer has.
        self.republish_unconsumed = not idempotent
        self._last_republish_check = 0.0
        self.topics = kafka.Topics(settings, bootstrap, metrics)
        self._checked_at = -1e9  # when the topic was last checked (loop time)
        self._last_cleanup = 0.0
        self._lease_until = dt.datetime.min.replace(tzinfo=dt.UTC)

    async def run(self) -> None:
        """Publish forever; survives Kafka and database outages."""
        backoff = Backoff(ceiling=MAX_BACKOFF)
        try:
            while True:
                try:
                    await self._connect()
                    published = await self.publish_batch()
                    backoff.succeeded()
                    await self._cleanup_now_and_then()
                    await self._republish_now_and_then()
                    if published < self.settings.relay_batch_size:
                        await asyncio.sleep(self.settings.relay_poll_interval)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.metrics.relay_errors.inc()
                    delay = backoff.failed()
                    if not isinstance(exc, kafka.TopicLayoutError):  # logged with its fix by the check
                        log.warning("outbox relay: %s; retrying in %.1f s", _describe(exc), delay)
                    # Nothing cached outlives an error: the topic is checked again, and a broker
                    # error gets a new producer (new connections, metadata read afresh).
                    self._checked_at = -1e9
                    if not isinstance(exc, SQLAlchemyError):
                        await self._disconnect()
                    await asyncio.sleep(delay)
        finally:
            await self._disconnect()
            await self.topics.close()
            try:
                await self._release()
            except Exception as exc:
                log.warning("outbox relay: could not release its lease: %s", _describe(exc))

    async def _connect(self) -> None:
        if asyncio.get_running_loop().time() - self._checked_at >= self.topics.interval():
            await self.check_topic()
        if self.producer is None:
            producer = kafka.producer(self.settings, self.bootstrap, idempotent=self.idempotent)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self.producer = producer

    async def check_topic(self) -> None:
        """Check the profile topic (see the module's docstring); raises ``TopicLayoutError``
        while it has the wrong partition count on a cluster."""
        topic = self.settings.kafka_topic_prefix + PROFILE_TOPIC
        checked = await self.topics.check({topic: self.settings.kafka_profile_partitions})
        if topic in checked.wrong:
            raise checked.wrong[topic]
        believed = kafka.believed_partitions(self.producer, topic)
        stale = believed is not None and believed != checked.partitions.get(topic)
        # The embedded broker acknowledges messages for partitions it does not have: with a
        # stale producer, those are lost too. (A cluster refuses them, and they are retried.)
        lost = checked.lost(topic) or (stale and checked.memory_only)
        if stale or checked.new_broker or lost:
            await self._disconnect()
        if lost:
            again = await whole(self._unpublish_all_unconsumed())
            if again:
                self.metrics.relay_republished.inc(again)
                log.warning("outbox relay: %s events published but not consumed may be lost with the broker's topic; publishing them again", again)
        self._checked_at = asyncio.get_running_loop().time()

    async def _unpublish_all_unconsumed(self) -> int:
        async with self.sessions.begin() as db:
            return await unpublish_unconsumed(db)

    async def _disconnect(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:
                log.warning("outbox relay: closing the producer: %s", _describe(exc))

    async def publish_batch(self) -> int:
        """Publish the oldest unpublished rows; return how many."""
        if dialect.opens_postgres(self.sessions):
            # The advisory lock lives as long as this transaction: read, publish, mark.
            async with self.sessions.begin() as db:
                if not await db.scalar(try_take(AdvisoryLock.OUTBOX_RELAY)):
                    return 0
                # Planned for the outbox as it is now (a plan kept from when it was nearly empty
                # reads the whole table for every batch), read in the index's order.
                await plan_queue_reads(db)
                rows = await self._unpublished(db)
                if rows:
                    await self._publish(rows)
                    now = await self._mark(db, rows)
        else:
            # SQLite has one writer: hold no write transaction while waiting for the broker.
            if (self._lease_until - utcnow()).total_seconds() < LEASE_SECONDS / 2:
                if not await whole(self._take_lease()):
                    return 0
            rows = await whole(self._read_unpublished())
            if rows:
                # The batch is acknowledged while the lease is still this relay's, or given up
                # (it stays unpublished): a relay that takes the lease over never races this one.
                remaining = (self._lease_until - utcnow()).total_seconds() - LEASE_MARGIN
                try:
                    async with asyncio.timeout(max(remaining, 0.0)):  # not wait_for (CPython gh-86296)
                        await self._publish(rows)
                except TimeoutError:
                    raise LeaseRunningOut(f"the broker did not acknowledge {len(rows)} events before the relay lease ran out") from None
                now = await whole(self._mark_now(rows))
        if not rows:
            return 0
        for row in rows:
            self.metrics.relay_latency.observe(max(0.0, (now - row.created_at).total_seconds()))
        self.metrics.relay_published.inc(len(rows))
        return len(rows)

    async def _take_lease(self) -> bool:
        async with self.sessions.begin() as db:
            return await self._lease(db)

    async def _read_unpublished(self) -> list[Any]:
        async with self.sessions() as db:
            return await self._unpublished(db)

    async def _mark_now(self, rows: list[Any]) -> dt.datetime:
        async with self.sessions.begin() as db:
            if not await self._lease(db):  # renewed with the mark, in one transaction
                log.warning("outbox relay: the lease was taken over while a batch was published; marking it anyway")
            return await self._mark(db, rows)

    async def _unpublished(self, db: AsyncSession) -> list[Any]:
        result = await db.execute(
            select(
                OutboxEvent.id, OutboxEvent.topic, OutboxEvent.key, OutboxEvent.event_type, OutboxEvent.payload,
                OutboxEvent.created_at, OutboxEvent.request_id,
            )
            .where(OutboxEvent.published_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(self.settings.relay_batch_size)
        )
        return list(result.all())

    async def _mark(self, db: AsyncSession, rows: list[Any]) -> dt.datetime:
        now = utcnow()
        await db.execute(outbox.stamping(dialect.name(db), "published_at"), {"ids": [r.id for r in rows], "at": now})
        return now

    async def _publish(self, rows: list[Any]) -> None:
        assert self.producer is not None
        futures = []
        for row in rows:
            value = json.dumps(row.payload, separators=(",", ":")).encode()
            headers = [("type", row.event_type.encode()), ("outbox-id", str(row.id).encode())]
            if row.request_id:
                headers.append(("request-id", row.request_id.encode()))
            futures.append(
                await self.producer.send(self.settings.kafka_topic_prefix + row.topic, value=value, key=row.key.encode(), headers=headers)
            )
        # Every message acknowledged, or the batch stays unpublished.
        await asyncio.gather(*futures)

    async def _lease(self, db: AsyncSession) -> bool:
        """Take or renew the relay lease; False while another relay holds it."""
        now = utcnow()
        expires = now + dt.timedelta(seconds=LEASE_SECONDS)
        taken = await db.execute(
            update(Lease)
            .where(Lease.name == LEASE_NAME, (Lease.holder == self.holder) | (Lease.expires_at < now))
            .values(holder=self.holder, expires_at=expires)
        )
        if taken.rowcount:
            self._lease_until = expires
            return True
        exists = await db.scalar(select(func.count()).select_from(Lease).where(Lease.name == LEASE_NAME))
        if exists:
            return False
        await db.execute(insert(Lease).values(name=LEASE_NAME, holder=self.holder, expires_at=expires))
        self._lease_until = expires
        return True

    async def _release(self) -> None:
        """Give the lease up at once, so a relay started next need not wait for it to expire."""
        if self._lease_until <= utcnow():
            return
        self._lease_until = utcnow()
        async with self.sessions.begin() as db:
            await db.execute(update(Lease).where(Lease.name == LEASE_NAME, Lease.holder == self.holder).values(expires_at=utcnow()))

    async def _republish_now_and_then(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.republish_unconsumed or loop.time() - self._last_republish_check < REPUBLISH_CHECK_SECONDS:
            return
        self._last_republish_check = loop.time()
        now = utcnow()
        again = await whole(
            self._unpublish_unconsumed(now - dt.timedelta(seconds=REPUBLISH_WINDOW), now - dt.timedelta(seconds=REPUBLISH_AFTER))
        )
        if again:
            self.metrics.relay_republished.inc(again)
            log.warning(
                "outbox relay: %s events published before %s s ago were never consumed (lost by the memory-only broker?); publishing them again",
                again,
                f"{REPUBLISH_AFTER:g}",
            )

    async def _unpublish_unconsumed(self, since: dt.datetime, before: dt.datetime) -> int:
        async with self.sessions.begin() as db:
            return await unpublish_unconsumed(db, since=since, before=before)

    async def _delete_published_before(self, cutoff: dt.datetime) -> int:
        async with self.sessions.begin() as db:
            return (await db.execute(delete(OutboxEvent).where(OutboxEvent.published_at < cutoff))).rowcount

    async def _cleanup_now_and_then(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_cleanup < CLEANUP_SECONDS:
            return
        self._last_cleanup = loop.time()
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.outbox_retention)
        removed = await whole(self._delete_published_before(cutoff))
        if removed:
            log.info("outbox relay: removed %s published events older than the retention period", removed)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
