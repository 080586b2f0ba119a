"""Nothing is lost: the broker going away, a receiver failing, a worker dying mid-batch, and
two workers sharing the work."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select

from identity import deliveries as status
from identity.appkeys import DB, SETTINGS
from identity.db.models import DeadLetter, Delivery, OutboxEvent, Service
from schemas.events import PROFILE_TOPIC
from sync.broker import EmbeddedBroker
from sync.fanout import GROUP_ID
from tests.support import EMBEDDED_DEFAULT, PRODUCTION_TOPOLOGY, Hub, eventually
from tests.sync.conftest import EXTERNAL_KAFKA, add_member
from tests.sync.helpers import SyncProcess, add_people, change, link_directly, recorded, settled
from tests.sync.receivers import Receivers


async def _linked(hub: Hub, receivers: Receivers, people: int, names: tuple[str, ...]) -> list[str]:
    subs = await add_people(hub, people)
    for name in names:
        member = await add_member(hub, receivers, name)
        await link_directly(hub, subs, member.rp.client_id)
    return subs


async def _all_at(receivers: Receivers, names: tuple[str, ...], final: dict[str, int], timeout: float = 60) -> None:
    for name in names:
        for sub, version in final.items():
            await receivers.wait_for(name, sub, version, timeout=timeout)


@pytest.mark.e2e
@EMBEDDED_DEFAULT
@pytest.mark.skipif(bool(EXTERNAL_KAFKA), reason="stops and restarts the embedded broker")
async def test_broker_down_during_200_changes_then_back_delivers_all(
    hub: Hub, receivers: Receivers, broker: EmbeddedBroker
) -> None:
    names = ("store", "forum")
    subs = await _linked(hub, receivers, 50, names)
    await _all_at(receivers, names, dict.fromkeys(subs, 1))

    await broker.stop()
    final = {}
    for round_ in range(4):
        for i, sub in enumerate(subs):
            final[sub] = await change(hub, sub, family_name=f"R{round_}-{i}")
    assert sum(1 for _ in final) * 4 == 200
    async with hub.app[DB]() as db:
        waiting = await db.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None)))
    assert waiting >= 200  # every change waits in the outbox while Kafka is away

    await asyncio.sleep(1.0)  # the relay and the worker notice and back off
    restarted = EmbeddedBroker(port=broker.port)
    await restarted.start()
    try:
        await _all_at(receivers, names, final, timeout=90)
        for name in names:
            for i, sub in enumerate(subs):
                assert receivers[name].profile(sub)["family_name"] == f"R3-{i}"
    finally:
        await restarted.stop()


async def test_receiver_down_for_a_while_gets_retries_then_the_latest_state(hub: Hub, receivers: Receivers) -> None:
    names = ("store", "forum")
    subs = await _linked(hub, receivers, 3, names)
    await _all_at(receivers, names, dict.fromkeys(subs, 1))

    receivers["forum"].fail_with = 503
    final = {}
    for step in range(5):
        for sub in subs:
            final[sub] = await change(hub, sub, given_name=f"Step{step}")
    # The healthy service is not held up by the failing one.
    await _all_at(receivers, ("store",), final)
    # Retried, on the schedule, and the failures recorded (a moment after they were answered).
    async def failing_recorded() -> Service | None:
        async with hub.app[DB]() as db:
            service = await db.scalar(select(Service).where(Service.name == "forum"))
        return service if receivers["forum"].failures_answered >= 2 and service is not None and service.webhook_failing_since is not None else None

    service = await eventually(failing_recorded, what="forum's failures recorded")
    async with hub.app[DB]() as db:
        pending = await db.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.service_id == service.id, Delivery.wanted_version > Delivery.delivered_version)
        )
    # Coalesced: one pending delivery per person, not one per change.
    assert pending == len(subs)

    receivers["forum"].fail_with = None
    await _all_at(receivers, ("forum",), final)
    for sub in subs:
        assert receivers["forum"].profile(sub)["given_name"] == "Step4"
    # Only the latest state travelled after the outage: no replay of each intermediate change.
    after = [d for d in receivers["forum"].received if d["data"]["version"] > 1]
    assert len(after) <= len(subs) * 2
    # The endpoint recovers by itself once a delivery succeeds (in the transaction that records
    # the outcome, a moment after the receiver answered).
    await settled(hub, service.client_id)
    async with hub.app[DB]() as db:
        failing = await db.scalar(select(Service.webhook_failing_since).where(Service.name == "forum"))
    assert failing is None


class TestRetryAfter:
    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        # It counts attempts: a lease longer than any stall of a loaded test machine (a late
        # outcome under the short test lease lets the delivery be taken and sent again).
        return settings_overrides | {"sync_lease": 30.0}

    async def test_429_honours_retry_after_and_410_disables_the_endpoint(self, hub: Hub, receivers: Receivers) -> None:
        subs = await _linked(hub, receivers, 1, ("store", "forum"))
        await receivers.wait_for("store", subs[0], 1)
        receivers["store"].fail_with, receivers["store"].retry_after = 429, "3"
        version = await change(hub, subs[0], given_name="Later")
        for _ in range(600):  # until the failure is recorded, with the next attempt it scheduled
            async with hub.app[DB]() as db:
                row = await db.scalar(select(Delivery).join(Service).where(Service.name == "store", Delivery.wanted_version == version))
            if row is not None and row.failing_since is not None:
                break
            await asyncio.sleep(0.05)
        assert row is not None and row.attempts == 1 and row.failing_since is not None
        # The schedule says 0.2 s, the service asked for 3 s: it is not asked again before then.
        assert row.next_attempt_at - row.failing_since >= dt.timedelta(seconds=2.9)
        assert receivers["store"].failures_answered == 1
        receivers["store"].fail_with = None
        await receivers.wait_for("store", subs[0], version, timeout=30)

        receivers["store"].fail_with = 410
        await change(hub, subs[0], given_name="Gone")
        for _ in range(200):
            async with hub.app[DB]() as db:
                disabled = await db.scalar(select(Service.webhook_disabled_at).where(Service.name == "store"))
            if disabled is not None:
                break
            await asyncio.sleep(0.05)
        assert disabled is not None
        answered = receivers["store"].failures_answered
        still = await change(hub, subs[0], given_name="Still gone")
        # The forum's delivery of the same change, recorded: the store's would have gone with it.
        async with hub.app[DB]() as db:
            forum = await db.scalar(select(Service.client_id).where(Service.name == "forum"))
        assert forum is not None
        await recorded(hub, forum, subs[0], still)
        assert receivers["store"].failures_answered == answered  # nothing more is sent to it


class TestGivingUp:
    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        # Quarantined at the first failure 0.1 s after the first (the second attempt, 0.2 s
        # later), given up 4 s after it: a window wide enough for a loaded machine's late retries.
        return settings_overrides | {"sync_give_up_after": 4.0, "sync_quarantine_after": 0.1, "sync_quarantine_probe": 0.3}

    async def test_a_delivery_that_keeps_failing_goes_to_the_dead_letters_and_can_be_redelivered(
        self, hub: Hub, receivers: Receivers
    ) -> None:
        subs = await _linked(hub, receivers, 1, ("store",))
        await receivers.wait_for("store", subs[0], 1)
        receivers["store"].fail_with = 500
        version = await change(hub, subs[0], given_name="Dead")
        letters: list[dict[str, Any]] = []
        for _ in range(200):
            async with hub.app[DB]() as db:
                letters = await status.dead_letters(db)
            if letters:
                break
            await asyncio.sleep(0.05)
        assert letters and letters[0]["sub"] == subs[0] and letters[0]["last_error"] == "HTTP 500"
        async with hub.app[DB]() as db:
            quarantined = await db.scalar(select(Service.webhook_quarantined_at).where(Service.name == "store"))
        assert quarantined is not None  # failing for longer than sync_quarantine_after

        receivers["store"].fail_with = None
        async with hub.app[DB].begin() as db:
            assert await status.redeliver(db, client_id=letters[0]["client_id"]) == 1
        data = await receivers.wait_for("store", subs[0], version, timeout=15)
        assert data["profile"]["given_name"] == "Dead"
        async with hub.app[DB]() as db:
            assert await status.dead_letters(db) == []
            assert await db.scalar(select(func.count()).select_from(DeadLetter)) == 1  # kept, marked redelivered
        await settled(hub, letters[0]["client_id"])  # the redelivery's outcome recorded
        async with hub.app[DB]() as db:
            quarantined = await db.scalar(select(Service.webhook_quarantined_at).where(Service.name == "store"))
        assert quarantined is None  # out of quarantine after a delivery succeeded


@pytest.mark.e2e
@PRODUCTION_TOPOLOGY
class TestSeparateProcesses:
    """The production topology: the hub without sync, and `onesignin relay` / `onesignin worker`
    processes beside it."""

    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        return settings_overrides | {"sync_in_process": False}

    async def test_worker_killed_mid_batch_loses_nothing(self, hub: Hub, receivers: Receivers, tmp_path: Path) -> None:
        names = ("store", "forum", "portal")
        subs = await _linked(hub, receivers, 40, names)
        relay = SyncProcess("relay", hub, tmp_path)
        first = SyncProcess("worker", hub, tmp_path)
        await relay.start()
        await first.start()
        try:
            await _all_at(receivers, names, dict.fromkeys(subs, 1))
            # The portal's deliveries are held in flight: the worker surely dies with work in hand.
            receivers["portal"].gate.clear()
            final = {}
            for round_ in range(3):
                for sub in subs:
                    final[sub] = await change(hub, sub, family_name=f"Round{round_}")
            # Kill the worker as soon as deliveries of the new changes are arriving.
            for _ in range(1000):
                if any(d["data"]["version"] > 1 for d in receivers["store"].received):
                    break
                await asyncio.sleep(0.01)
            first.kill()
            assert all(receivers["portal"].version(sub) == 1 for sub in subs)
            receivers["portal"].gate.set()

            second = SyncProcess("worker", hub, tmp_path)
            await second.start()
            try:
                await _all_at(receivers, names, final, timeout=120)
                for name in names:
                    for sub in subs:
                        assert receivers[name].profile(sub)["family_name"] == "Round2"
            finally:
                await second.stop()
        finally:
            await first.stop()
            await relay.stop()

    async def test_a_worker_that_stops_leaves_its_successor_nothing_to_read_again(self, hub: Hub, receivers: Receivers, tmp_path: Path) -> None:
        """A worker commits the offsets of what it recorded together, not per batch; as it stops
        it commits what it recorded, so the worker that takes over reads on from there and sends
        nothing a second time."""
        subs = await _linked(hub, receivers, 20, ("store",))
        relay = SyncProcess("relay", hub, tmp_path)
        first = SyncProcess("worker", hub, tmp_path)
        await relay.start()
        await first.start()
        try:
            await _all_at(receivers, ("store",), dict.fromkeys(subs, 1))
            final = {sub: await change(hub, sub, family_name="Before") for sub in subs}
            await _all_at(receivers, ("store",), final)
            await first.stop()  # at once: the last batch's offsets may not have been committed yet
            settings = hub.app[SETTINGS]
            topic = settings.kafka_topic_prefix + PROFILE_TOPIC
            committed, ends = await _group_offsets(settings.kafka_bootstrap_servers, topic, settings.kafka_topic_prefix + GROUP_ID)
            assert committed == ends

            second = SyncProcess("worker", hub, tmp_path)
            await second.start()
            try:
                # A barrier: once the successor delivers a new change, it has read everything
                # before it that it was going to read.
                last = await change(hub, subs[0], family_name="After")
                await receivers.wait_for("store", subs[0], last, timeout=90)
                sent = Counter((d["data"]["sub"], d["data"]["version"]) for d in receivers["store"].received)
                assert [key for key, times in sent.items() if times > 1] == []
            finally:
                await second.stop()
        finally:
            await first.stop()
            await relay.stop()

    async def test_two_workers_in_one_group_deliver_every_change(self, hub: Hub, receivers: Receivers, tmp_path: Path) -> None:
        names = ("store", "forum")
        subs = await _linked(hub, receivers, 30, names)
        processes = [SyncProcess("relay", hub, tmp_path), SyncProcess("relay", hub, tmp_path)]
        workers = [SyncProcess("worker", hub, tmp_path), SyncProcess("worker", hub, tmp_path)]
        for p in processes + workers:
            await p.start()
        try:
            await _all_at(receivers, names, dict.fromkeys(subs, 1), timeout=90)
            # The group has settled (each worker holds some of the partitions) before the changes.
            partitions = hub.app[SETTINGS].kafka_profile_partitions
            async def balanced() -> list[float] | None:
                assigned = [await w.metric("onesignin_sync_partitions_assigned") for w in workers]
                return assigned if all(a > 0 for a in assigned) and sum(assigned) == partitions else None

            await eventually(balanced, timeout=60, what="both workers holding partitions")
            final = {}
            for round_ in range(3):
                for sub in subs:
                    final[sub] = await change(hub, sub, given_name=f"G{round_}")
            await _all_at(receivers, names, final, timeout=90)
            # Both workers took part: the group split the partitions between them.
            consumed = [await w.metric("onesignin_sync_events_consumed_total") for w in workers]
            assert all(c > 0 for c in consumed), consumed
            # Two relays, yet every event was published once (one holds the lock at a time), or
            # again only as the relay republishes, and counts, events that no worker consumed
            # within 30 s (the memory-only broker may have lost them; a loaded machine's workers
            # can take that long to join the group).
            async with hub.app[DB]() as db:
                events = await db.scalar(select(func.count()).select_from(OutboxEvent))

            async def counted() -> tuple[float, float] | None:  # a relay counts a batch once its marking committed
                published = sum([await r.metric("onesignin_outbox_published_total") for r in processes])
                again = sum([await r.metric("onesignin_outbox_republished_total") for r in processes])
                return (published, again) if published >= events + again else None

            published, again = await eventually(counted, what="every event published and counted")
            assert published == events + again
        finally:
            for p in workers + processes:
                await p.stop()


async def _group_offsets(bootstrap: str | None, topic: str, group: str) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offset of each partition of ``topic`` that has messages, and each
    such partition's end (the offset its next message will have), as reading it to its high
    watermark finds it."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()  # the cluster's metadata, read afresh
        partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends: dict[int, int] = {}
        async with asyncio.timeout(60):
            while len(ends) < len(partitions):
                await reader.getmany(timeout_ms=200)
                for tp in partitions:
                    high = reader.highwater(tp)
                    if high is not None and await reader.position(tp) >= high:
                        ends[tp.partition] = high
    finally:
        await reader.stop()
    member = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await member.start()
    try:
        committed = {p: await member.committed(TopicPartition(topic, p)) for p, end in ends.items() if end}
    finally:
        await member.stop()
    return committed, {p: end for p, end in ends.items() if end}
