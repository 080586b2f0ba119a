"""The delivery store's rules, driven step by step through the worker's own functions: a request
that arrives while a delivery is in flight is never settled by that delivery."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from identity.db.models import Account, Delivery, Service
from identity.web.appkeys import CIPHER, DB
from schemas.events import LinkCreated, ProfileChanged
from sync import fanout
from sync.deliver import Deliverer, _Result
from sync.metrics import SyncMetrics
from sync.webhooks import Outcome
from tests.support import Hub
from tests.sync.conftest import add_member
from tests.sync.helpers import add_people, link_directly
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
        deliverer = Deliverer(hub.settings, hub.app[DB], hub.app[CIPHER], http, bootstrap=None, idempotent=False, metrics=SyncMetrics())
        await deliverer._refresh_endpoints(force=True)
        [job] = await deliverer.claim(10)
        first_id = job.message_id

        # While it is in flight, the person links again (say with wider scopes): a snapshot is wanted.
        async with hub.app[DB].begin() as db:
            await fanout.record(db, [LinkCreated(id="e2", sub=sub, client_id=store.rp.client_id, version=1, occurred_at=now)], echo_suppression=True)

        # The in-flight delivery succeeds: it must not settle the newer request.
        async with hub.app[DB].begin() as db:
            await deliverer._record(db, [_Result(job, Outcome("ok"), now)])
        row = await _row(hub)
        assert row.snapshot and row.wanted_version > row.delivered_version

        # Due now, sent as a snapshot, under a new message id.
        [again] = await deliverer.claim(10)
        assert '"type":"profile.snapshot"' in again.body
        assert again.message_id != first_id
        async with hub.app[DB].begin() as db:
            await deliverer._record(db, [_Result(again, Outcome("ok"), now)])
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
        deliverer = Deliverer(settings, hub.app[DB], hub.app[CIPHER], http, bootstrap=None, idempotent=False, metrics=SyncMetrics())
        await deliverer._refresh_endpoints(force=True)
        [job] = await deliverer.claim(10)
        async with hub.app[DB].begin() as db:
            await deliverer._record(db, [_Result(job, Outcome("retry", "HTTP 503"), account.updated_at)])
        [retry] = await deliverer.claim(10)
        assert retry.message_id == job.message_id and retry.attempts == 1
