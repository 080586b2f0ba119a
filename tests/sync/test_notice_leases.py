"""A notice's lease and the outcomes of its attempts. A worker that stalls past its lease may see
another attempt of the same notice taken and recorded before its own outcome arrives; that late
outcome must not be counted over the newer one (nor reset the schedule a ``Retry-After`` set)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from identity import notices
from identity.appkeys import DB
from identity.db.models import Notice, Service, utcnow
from schemas.events import LinkRevoked, LinkRevokedData
from sync import webhooks
from sync.engine import Result
from tests.support import Hub
from tests.sync.conftest import add_member
from tests.sync.helpers import engines
from tests.sync.receivers import Receivers


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:
    # No worker of the hub's own: the test is the only one taking notices.
    return kafka_settings | {"sync_in_process": False, "sync_retry_schedule": [0.2, 0.4]}


async def test_a_late_outcome_of_an_attempt_whose_lease_ran_out_is_not_counted(
    hub: Hub, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store")
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == store.rp.client_id))
        assert service is not None
        now = notices.timestamp()
        notice = LinkRevoked(
            id=notices.new_notice_id(),
            timestamp=now,
            data=LinkRevokedData(sub="someone", revoked_at=now),
        )
        notices.add(db, service, None, "someone", notice)

    async with aiohttp.ClientSession() as http:
        _, taker = engines(hub, http)
        await taker.endpoints.refresh()
        [first] = await taker.claim(10)
        assert await taker.claim(10) == []  # leased: nobody else takes it meanwhile

        # The first attempt stalls past its lease; the notice is taken again and that attempt's
        # outcome is recorded first (the endpoint asked for a minute).
        async with hub.app[DB].begin() as db:
            await db.execute(update(Notice).where(Notice.id == first.id).values(next_attempt_at=utcnow()))
        [second] = await taker.claim(10)
        assert second.id == first.id and second.attempts == first.attempts == 0
        async with hub.app[DB].begin() as db:
            await taker.record(db, [Result(second, webhooks.Outcome("retry", "HTTP 503", status=503, retry_after=60), utcnow())])
        async with hub.app[DB].begin() as db:
            await taker.record(db, [Result(first, webhooks.Outcome("retry", "HTTP 500", status=500), utcnow())])

    async with hub.app[DB]() as db:
        row = await db.get(Notice, first.id)
    assert row is not None and row.state == "pending"
    assert row.attempts == 1 and row.last_error == "HTTP 503"
    assert row.failing_since is not None
    assert row.next_attempt_at - row.failing_since >= dt.timedelta(seconds=59)


async def test_a_410_to_a_notice_closes_the_webhook_to_profile_deliveries_at_once(
    hub: Hub, receivers: Receivers
) -> None:
    store = await add_member(hub, receivers, "store")
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == store.rp.client_id))
        assert service is not None
        now = notices.timestamp()
        notice = LinkRevoked(id=notices.new_notice_id(), timestamp=now, data=LinkRevokedData(sub="someone", revoked_at=now))
        notices.add(db, service, None, "someone", notice)
    receivers["store"].fail_with = 410

    async with aiohttp.ClientSession() as http:
        deliverer, taker = engines(hub, http)
        deliverer.accepting = True
        await deliverer.endpoints.refresh(force=True)
        room = deliverer.room()
        assert room is not None and (service.id, "webhook") in room.room
        [job] = await taker.claim(10)

        await taker.send(job)  # answered 410, not yet recorded
        assert [r.outcome.result for r in taker.results] == ["gone"]
        for _ in range(2):  # closed to profile deliveries at once, even once the endpoints are read again
            room = deliverer.room()
            assert room is not None and (service.id, "webhook") not in room.room
            assert service.id in deliverer.endpoints.closed(deliverer.inflight)["webhook"]
            await deliverer.endpoints.refresh(force=True)  # read before the disabling commits

        await taker.flush()
        await deliverer.endpoints.refresh()  # due again: read after the commit
        endpoint = deliverer.endpoints.get(service.id)
        assert endpoint is not None and endpoint.disabled

    async with hub.app[DB]() as db:
        assert await db.scalar(select(Service.webhook_disabled_at).where(Service.id == service.id)) is not None


async def test_a_notice_failing_counts_toward_the_webhooks_quarantine_and_a_notice_accepted_ends_it(
    hub: Hub, receivers: Receivers
) -> None:
    """A failing webhook is the same webhook whatever is sent to it: a notice's failure, once the
    webhook has failed for ``sync_quarantine_after``, quarantines it (nothing more before the
    next probe, notices included), as a delivery's does; a notice it accepts brings it back."""
    store = await add_member(hub, receivers, "store")
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == store.rp.client_id))
        assert service is not None
        now = notices.timestamp()
        for key in ("someone", "another"):
            notice = LinkRevoked(id=notices.new_notice_id(), timestamp=now, data=LinkRevokedData(sub=key, revoked_at=now))
            notices.add(db, service, None, key, notice)
        # Failing for longer than sync_quarantine_after already (its deliveries failed, say).
        service.webhook_failing_since = utcnow() - dt.timedelta(seconds=hub.settings.sync_quarantine_after + 1)

    async with aiohttp.ClientSession() as http:
        _, taker = engines(hub, http)
        await taker.endpoints.refresh()
        failed, accepted = await taker.claim(10)
        at = utcnow()
        async with hub.app[DB].begin() as db:
            await taker.record(db, [Result(failed, webhooks.Outcome("retry", "HTTP 500", status=500), at)])
        async with hub.app[DB]() as db:
            service = await db.get(Service, failed.service_id)
            other = await db.get(Notice, accepted.id)
        assert service is not None and service.webhook_quarantined_at is not None
        assert other is not None  # held until the next probe
        probe = at + dt.timedelta(seconds=hub.settings.sync_quarantine_probe)
        assert other.next_attempt_at.replace(tzinfo=dt.UTC) >= probe.replace(tzinfo=dt.UTC)

        async with hub.app[DB].begin() as db:
            await taker.record(db, [Result(accepted, webhooks.Outcome("ok"), utcnow())])
        async with hub.app[DB]() as db:
            service = await db.get(Service, failed.service_id)
            retried = await db.get(Notice, failed.id)
        assert service is not None and service.webhook_quarantined_at is None and service.webhook_failing_since is None
        assert retried is not None and retried.state == "pending" and retried.attempts == 0  # due again at once
