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
from identity.db.models import Notice, Service, utcnow
from identity.web.appkeys import CIPHER, DB
from schemas.events import LinkRevoked, LinkRevokedData
from sync import webhooks
from sync.deliver import Deliverer
from sync.metrics import SyncMetrics
from sync.notices import NoticeDeliverer
from tests.support import Hub
from tests.sync.conftest import add_member
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
        deliverer = Deliverer(
            hub.settings, hub.app[DB], hub.app[CIPHER], http, bootstrap=None, idempotent=False, metrics=SyncMetrics()
        )
        taker = NoticeDeliverer(hub.settings, hub.app[DB], hub.app[CIPHER], http, publisher=deliverer, metrics=SyncMetrics())
        await taker._refresh_endpoints()
        [first] = await taker.claim(10)
        assert await taker.claim(10) == []  # leased: nobody else takes it meanwhile

        # The first attempt stalls past its lease; the notice is taken again and that attempt's
        # outcome is recorded first (the endpoint asked for a minute).
        async with hub.app[DB].begin() as db:
            await db.execute(update(Notice).where(Notice.id == first.id).values(next_attempt_at=utcnow()))
        [second] = await taker.claim(10)
        assert second.id == first.id and second.attempts == first.attempts == 0
        await taker._record_now(second, webhooks.Outcome("retry", "HTTP 503", status=503, retry_after=60))
        await taker._record_now(first, webhooks.Outcome("retry", "HTTP 500", status=500))

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
        deliverer = Deliverer(
            hub.settings, hub.app[DB], hub.app[CIPHER], http, bootstrap=None, idempotent=False, metrics=SyncMetrics()
        )
        deliverer.accepting = True
        await deliverer._refresh_endpoints(force=True)
        taker = NoticeDeliverer(hub.settings, hub.app[DB], hub.app[CIPHER], http, publisher=deliverer, metrics=SyncMetrics())
        await taker._refresh_endpoints()
        lease = deliverer.direct_lease()
        assert lease is not None and (service.id, "webhook") in lease.room
        [job] = await taker.claim(10)

        seen_while_recording: list[bool] = []
        record = taker._record_now

        async def recording(job: Any, outcome: webhooks.Outcome) -> None:
            lease = deliverer.direct_lease()
            await deliverer._refresh_endpoints(force=True)  # read before the disabling commits
            seen_while_recording.append(
                lease is not None
                and (service.id, "webhook") not in lease.room
                and service.id in deliverer._excluded()[0]
            )
            await record(job, outcome)

        taker._record_now = recording  # type: ignore[method-assign]
        await taker._deliver(job)
        assert seen_while_recording == [True]
        assert deliverer._gone == set()
        await deliverer._refresh_endpoints()  # due again: read after the commit
        assert deliverer.endpoints[service.id].disabled

    async with hub.app[DB]() as db:
        assert await db.scalar(select(Service.webhook_disabled_at).where(Service.id == service.id)) is not None
