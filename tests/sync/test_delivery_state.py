"""The delivery store's rules, driven step by step through the worker's own functions: a request
that arrives while a delivery is in flight is never settled by that delivery."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, update

from identity import admin
from identity.appkeys import CIPHER, DB
from identity.db.models import Account, DeadLetter, Delivery, Service, utcnow
from identity.operations import services
from schemas.events import LinkCreated, ProfileChanged
from sync import fanout
from sync.endpoints import Room
from sync.engine import Engine, Result
from sync.webhooks import Outcome
from tests.support import Hub
from tests.sync.conftest import add_member
from tests.sync.helpers import add_people, engines, link_directly
from tests.sync.receivers import Receivers


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:
    # The test plays the worker itself.
    return kafka_settings | {"sync_in_process": False}


async def _row(hub: Hub) -> Delivery:
    async with hub.app[DB]() as db:
        row = await db.scalar(select(Delivery))
        assert row is not None
        return row


async def test_a_relink_during_an_in_flight_delivery_still_gets_its_snapshot(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store")
    sub = (await add_people(hub, 1))[0]
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        service = await db.scalar(select(Service).where(Service.client_id == store.rp.client_id))
        assert account is not None and service is not None
    await link_directly(hub, [sub], store.rp.client_id)
    now = account.updated_at

    async with hub.app[DB].begin() as db:
        await fanout.record(db, [ProfileChanged(id="e1", sub=sub, version=1, changed=["given_name"], channel="support", occurred_at=now)], echo_suppression=True)

    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]
        await deliverer.endpoints.refresh(force=True)
        [job] = await deliverer.claim(10)
        first_id = job.message_id

        # While it is in flight, the person links again (say with wider scopes): a snapshot is wanted.
        async with hub.app[DB].begin() as db:
            await fanout.record(db, [LinkCreated(id="e2", sub=sub, client_id=store.rp.client_id, version=1, occurred_at=now)], echo_suppression=True)

        # The in-flight delivery succeeds: it must not settle the newer request.
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(job, Outcome("ok"), now)])
        row = await _row(hub)
        assert row.snapshot and row.wanted_version > row.delivered_version

        # Due now, sent as a snapshot, under a new message id.
        [again] = await deliverer.claim(10)
        assert '"type":"profile.snapshot"' in again.body
        assert again.message_id != first_id
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(again, Outcome("ok"), now)])
        row = await _row(hub)
        assert not row.snapshot and row.delivered_version == row.wanted_version
        assert await deliverer.claim(10) == []  # settled


async def test_a_retry_keeps_its_message_id(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store")
    sub = (await add_people(hub, 1))[0]
    await link_directly(hub, [sub], store.rp.client_id)
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
    async with hub.app[DB].begin() as db:
        await fanout.record(db, [ProfileChanged(id="e1", sub=sub, version=1, changed=["name"], channel="support", occurred_at=account.updated_at)], echo_suppression=True)
    settings = hub.settings.model_copy(update={"sync_retry_schedule": [0.0001]})
    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http, settings)[0]
        await deliverer.endpoints.refresh(force=True)
        [job] = await deliverer.claim(10)
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(job, Outcome("retry", "HTTP 503"), account.updated_at)])
        [retry] = await deliverer.claim(10)
        assert retry.message_id == job.message_id and retry.attempts == 1


async def test_deliveries_taken_as_they_are_recorded_are_leased_within_the_room_given(hub: Hub, receivers: Receivers) -> None:
    """The worker's fan-out leases what its deliverer has room for as it records it: those rows
    are not claimable by any worker until the lease runs out, the rest stay due for claims, and a
    row already in flight keeps its lease (it is not sent a second time at once)."""
    store = await add_member(hub, receivers, "store")
    subs = await add_people(hub, 3)
    await link_directly(hub, subs, store.rp.client_id)
    async with hub.app[DB]() as db:
        accounts = {a.sub: a for a in (await db.scalars(select(Account).where(Account.sub.in_(subs)))).all()}
    now = accounts[subs[0]].updated_at

    def changed(sub: str, version: int) -> ProfileChanged:
        return ProfileChanged(id=f"e{sub}{version}", sub=sub, version=version, changed=["given_name"], channel="support", occurred_at=now)

    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]
        assert deliverer.room() is None  # not running: nothing is taken
        deliverer.accepting = True
        await deliverer.endpoints.refresh(force=True)
        service_id = next(iter(deliverer.endpoints.by_id))
        room = deliverer.room()
        assert room is not None
        room = Room(until=room.until, room={(service_id, "webhook"): 2})  # room for two of the three
        async with hub.app[DB].begin() as db:
            taken = await fanout.record_taking(db, [changed(s, 1) for s in subs], echo_suppression=True, room=room)
            assert taken.count == 3
            jobs = await deliverer.jobs_for(db, taken)
        assert len(jobs) == 2 and taken.left == 1 and taken.in_flight == 0
        assert room.room == {(service_id, "webhook"): 2}  # the room handed over is not written to
        assert {j.sub for j in jobs} < set(subs)
        assert all(f'"sub":"{j.sub}"' in j.body and j.channel == "webhook" for j in jobs)

        # Only the one without room can be claimed; the two taken are leased.
        [claimed] = await deliverer.claim(10)
        assert claimed.sub not in {j.sub for j in jobs}

        # A newer change to a person whose delivery is in flight: that row keeps its lease.
        in_flight = jobs[0]
        room = deliverer.room()
        assert room is not None
        async with hub.app[DB].begin() as db:
            taken = await fanout.record_taking(db, [changed(in_flight.sub, 2)], echo_suppression=True, room=room)
            assert await deliverer.jobs_for(db, taken) == []
        assert taken.in_flight == 1 and taken.left == 0

        # Its outcome leaves the newer version due at once, for a claim.
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(in_flight, Outcome("ok"), now)])
        [newer] = await deliverer.claim(10)
        assert newer.sub == in_flight.sub and newer.message_id != in_flight.message_id


async def test_removing_a_channel_drops_what_was_queued_for_it(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store")
    async with hub.app[DB].begin() as db:
        await admin.update_service_sync(db, hub.app[CIPHER], store.rp.client_id, kafka_topic=True)
    subs = await add_people(hub, 2)
    await link_directly(hub, subs, store.rp.client_id)
    async with hub.app[DB].begin() as db:
        now = utcnow()
        await fanout.record(db, [ProfileChanged(id=f"e{s}", sub=s, version=2, changed=["name"], channel="support", occurred_at=now) for s in subs], echo_suppression=True)

    async def queued() -> list[str]:
        async with hub.app[DB]() as db:
            return sorted((await db.scalars(select(Delivery.channel))).all())

    assert await queued() == ["topic", "topic", "webhook", "webhook"]
    async with hub.app[DB].begin() as db:
        await admin.update_service_sync(db, hub.app[CIPHER], store.rp.client_id, remove_webhook=True)
    assert await queued() == ["topic", "topic"]  # nothing left waiting for a webhook that is gone
    async with hub.app[DB].begin() as db:
        await admin.update_service_sync(db, hub.app[CIPHER], store.rp.client_id, kafka_topic=False)
    assert await queued() == []


@contextlib.asynccontextmanager
async def _about_to_give_up(hub: Hub, receivers: Receivers) -> AsyncIterator[tuple[Engine, Any, str, str]]:
    """A person's delivery of version 1 to a member service that failed once and has failed for
    longer than the give-up time: the next failure recorded for the job yielded (with the worker's
    deliverer, the person's sub and the service's client id) gives the row up."""
    store = await add_member(hub, receivers, "store")
    sub = (await add_people(hub, 1))[0]
    await link_directly(hub, [sub], store.rp.client_id)
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
    async with hub.app[DB].begin() as db:
        await fanout.record(db, [ProfileChanged(id="e1", sub=sub, version=1, changed=["name"], channel="support", occurred_at=account.updated_at)], echo_suppression=True)
    settings = hub.settings.model_copy(update={"sync_retry_schedule": [0.0001], "sync_give_up_after": 0.5})
    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http, settings)[0]
        await deliverer.endpoints.refresh(force=True)
        [first] = await deliverer.claim(10)
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(first, Outcome("retry", "HTTP 503"), utcnow())])
        [last] = await deliverer.claim(10)
        assert last.failing_since is not None
        yield deliverer, last, sub, store.rp.client_id


async def test_a_failure_that_comes_after_another_attempt_delivered_is_not_recorded(hub: Hub, receivers: Receivers) -> None:
    """An attempt that stalls past its lease while another takes the row and delivers it: the
    stalled attempt's failure, recorded last, must neither mark the delivered row failing nor
    give it up to the dead letters."""
    async with _about_to_give_up(hub, receivers) as (deliverer, stalled, _sub, client_id):
        async with hub.app[DB].begin() as db:  # its lease runs out
            await db.execute(update(Delivery).where(Delivery.id == stalled.delivery_id).values(next_attempt_at=utcnow()))
        [taken] = await deliverer.claim(10)
        assert taken.delivery_id == stalled.delivery_id
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(taken, Outcome("ok"), utcnow())])
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(stalled, Outcome("retry", "HTTP 500"), utcnow() + dt.timedelta(seconds=1))])

    row = await _row(hub)
    assert row.state == "active" and row.delivered_version == row.wanted_version == 1
    assert row.attempts == 0 and row.failing_since is None and row.last_error is None
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(DeadLetter)) == 0
        failing = await db.scalar(select(Service.webhook_failing_since).where(Service.client_id == client_id))
    assert failing is None


async def test_a_delivery_given_up_while_a_newer_change_waited_names_the_newer_version(hub: Hub, receivers: Receivers) -> None:
    """The attempt that gives up carried version 1; version 2 came while it was in flight. The
    row is given up with both, and its dead letter names 2: what redelivering it sends."""
    async with _about_to_give_up(hub, receivers) as (deliverer, last, sub, _client_id):
        async with hub.app[DB].begin() as db:
            await fanout.record(db, [ProfileChanged(id="e2", sub=sub, version=2, changed=["name"], channel="support", occurred_at=utcnow())], echo_suppression=True)
        async with hub.app[DB].begin() as db:
            await deliverer.record(db, [Result(last, Outcome("retry", "HTTP 500"), utcnow() + dt.timedelta(seconds=1))])

    row = await _row(hub)
    assert row.state == "dead" and row.wanted_version == 2 and row.delivered_version == 0
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(DeadLetter.version))).all() == [2]


async def test_a_webhook_that_answered_410_gets_nothing_more_from_this_worker(hub: Hub, receivers: Receivers) -> None:
    """From the 410 on, not only once the disabling is committed and the endpoints are read
    again: the fan-out's direct sends and the claims leave that webhook out at once, even if the
    endpoints are read again before the outcome is recorded."""
    store = await add_member(hub, receivers, "store")
    sub = (await add_people(hub, 1))[0]
    await link_directly(hub, [sub], store.rp.client_id)
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
    async with hub.app[DB].begin() as db:
        await fanout.record(db, [ProfileChanged(id="e1", sub=sub, version=1, changed=["name"], channel="support", occurred_at=account.updated_at)], echo_suppression=True)
    receivers["store"].fail_with = 410
    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]
        deliverer.accepting = True
        await deliverer.endpoints.refresh(force=True)
        service_id = next(iter(deliverer.endpoints.by_id))
        room = deliverer.room()
        assert room is not None and (service_id, "webhook") in room.room
        [job] = await deliverer.claim(10)
        await deliverer.send(job)
        assert [r.outcome.result for r in deliverer.results] == ["gone"]

        # Answered, not yet recorded: already closed, and still after the endpoints are read again.
        for _ in range(2):
            room = deliverer.room()
            assert room is not None and (service_id, "webhook") not in room.room
            assert service_id in deliverer.endpoints.closed(deliverer.inflight)["webhook"]
            await deliverer.endpoints.refresh(force=True)

        await deliverer.flush()
        async with hub.app[DB]() as db:
            assert await db.scalar(select(Service.webhook_disabled_at).where(Service.id == service_id)) is not None
        await deliverer.endpoints.refresh()  # read again after the commit
        endpoint = deliverer.endpoints.get(service_id)
        assert endpoint is not None and endpoint.disabled

        # Enabled again by the operator: once read, the webhook is open again.
        async with hub.app[DB].begin() as db:
            await admin.update_service_sync(db, hub.app[CIPHER], store.rp.client_id, webhook_url=receivers.url("store"))
        await deliverer.endpoints.refresh(force=True)
        room = deliverer.room()
        assert room is not None and (service_id, "webhook") in room.room


async def test_a_disabled_service_is_sent_nothing_until_it_is_enabled_again(hub: Hub, receivers: Receivers) -> None:
    store = await add_member(hub, receivers, "store")
    [sub] = await add_people(hub, 1)
    await link_directly(hub, [sub], store.rp.client_id)
    async with hub.app[DB].begin() as db:
        row_service = (await db.scalar(select(Service.id).where(Service.client_id == store.rp.client_id)))
        await services.set_disabled(db, store.rp.client_id, True, actor="operator")
        await fanout.record(db, [LinkCreated(id="e1", sub=sub, client_id=store.rp.client_id, version=1, occurred_at=utcnow())], echo_suppression=True)

    async with aiohttp.ClientSession() as http:
        deliverer = engines(hub, http)[0]
        await deliverer.endpoints.refresh(force=True)
        # Recorded, not handed over for sending, and not claimed: it waits, unsent and unspent.
        assert not any(sid == row_service for sid, _ in deliverer.endpoints.room({}, 10, utcnow()).room)
        assert await deliverer.claim(10) == []
        row = await _row(hub)
        assert row.attempts == 0 and row.delivered_version < row.wanted_version

        async with hub.app[DB].begin() as db:
            await services.set_disabled(db, store.rp.client_id, False, actor="operator")
        await deliverer.endpoints.refresh(force=True)
        [job] = await deliverer.claim(10)
        await deliverer.send(job)
        await deliverer.flush()
    await receivers.wait_for("store", sub, 1, timeout=30)
    assert [d["type"] for d in receivers["store"].received] == ["profile.snapshot"]
