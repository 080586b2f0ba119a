"""Helpers for the sync tests: people linked in bulk, changes made in bulk, and the sync
pipeline run as separate ``onesignin relay`` / ``onesignin worker`` processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

from identity import outbox
from identity.accounts.store import find_by_sub, update_details
from identity.appkeys import CIPHER, DB
from identity.db.models import Account, Delivery, Link, Notice, OutboxEvent, Service, utcnow
from identity.settings import Settings
from schemas.events import LinkCreated
from sync.deliver import Deliveries
from sync.endpoints import Endpoints
from sync.engine import Engine, Sender
from sync.metrics import SyncMetrics
from sync.notices import Notices
from sync.ssf import SetSigner
from tests.conftest import free_port
from tests.support import Hub, eventually


def engines(hub: Hub, http: aiohttp.ClientSession, settings: Settings | None = None) -> tuple[Engine, Engine]:
    """A worker's two engines (profile deliveries, notices) sharing one endpoint registry, as
    ``sync.runtime`` wires them, without Kafka, for a test that plays the worker step by step."""
    settings = settings or hub.settings
    endpoints = Endpoints(settings, hub.app[DB], hub.app[CIPHER], topics=False)
    sender = Sender(settings, http, None, SetSigner(settings, hub.app[DB], hub.app[CIPHER]))
    metrics = SyncMetrics()
    return (
        Engine(Deliveries(settings), settings, hub.app[DB], endpoints, sender, metrics=metrics),
        Engine(Notices(settings), settings, hub.app[DB], endpoints, sender, metrics=metrics),
    )


async def link_directly(hub: Hub, subs: list[str], client_id: str, scope: str = "openid profile email") -> None:
    """Link people to a service as a completed sign-in does (the link and its event, in one
    transaction), without driving a browser for each of them."""
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == client_id))
        assert service is not None
        now = utcnow()
        for sub in subs:
            account = await find_by_sub(db, sub)
            assert account is not None
            db.add(Link(account_id=account.id, service_id=service.id, status="active", scope=scope, created_at=now, updated_at=now))
            outbox.add(db, LinkCreated(id=outbox.new_event_id(), sub=sub, client_id=client_id, version=account.version, occurred_at=now))


async def add_people(hub: Hub, count: int) -> list[str]:
    batch = uuid.uuid4().hex[:6]
    return [await hub.add_user(email=f"p{i}.{batch}@example.com", verified=True, given_name=f"P{i}") for i in range(count)]


async def change(hub: Hub, sub: str, **changes: Any) -> int:
    """A change through support (no service origin, so every linked service hears of it)."""
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        await update_details(db, account, changes, channel="support", actor="agent@example.com")
        return account.version


async def recorded(hub: Hub, client_id: str, sub: str, version: int, timeout: float = 30.0) -> None:
    """Wait until the worker has recorded that ``version`` reached the service on every channel.
    (A receiver has a delivery a moment before its outcome is committed; a change made in that
    moment is coalesced with the delivery still in flight.)"""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with hub.app[DB]() as db:
            rows = (
                await db.execute(
                    select(Delivery.delivered_version)
                    .join(Service, Service.id == Delivery.service_id)
                    .join(Account, Account.id == Delivery.account_id)
                    .where(Service.client_id == client_id, Account.sub == sub)
                )
            ).scalars().all()
        if rows and all(v >= version for v in rows):
            return
        assert asyncio.get_running_loop().time() < deadline, (client_id, sub, version, rows)
        await asyncio.sleep(0.05)


def group_timeouts(settings: Settings) -> dict[str, int]:
    """A test's own group consumer joins as fast as the hub's workers (see ``kafka_session_timeout``)."""
    return {
        "session_timeout_ms": int(settings.kafka_session_timeout * 1000),
        "heartbeat_interval_ms": int(settings.kafka_session_timeout * 200),
    }


class SyncProcess:
    """``onesignin relay`` or ``onesignin worker`` as a child process, sharing the hub's
    database and broker."""

    def __init__(self, role: str, hub: Hub, tmp: Path) -> None:
        self.role = role
        self.port = free_port()
        settings = hub.settings
        self.env = os.environ | {
            "ONESIGNIN_DATABASE_URL": settings.resolved_database_url,
            "ONESIGNIN_DATA_DIR": str(tmp),
            "ONESIGNIN_SECRET_KEY": settings.secret_key or "",
            "ONESIGNIN_ISSUER": settings.issuer,
            "ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
            "ONESIGNIN_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
            "ONESIGNIN_KAFKA_ENABLE_IDEMPOTENCE": "true" if settings.kafka_enable_idempotence else "false",
            "ONESIGNIN_KAFKA_PROFILE_PARTITIONS": str(settings.kafka_profile_partitions),
            "ONESIGNIN_KAFKA_SERVICE_PARTITIONS": str(settings.kafka_service_partitions),
            "ONESIGNIN_KAFKA_SESSION_TIMEOUT": str(settings.kafka_session_timeout),
            "ONESIGNIN_SYNC_RETRY_SCHEDULE": json.dumps(settings.sync_retry_schedule),
            "ONESIGNIN_RELAY_POLL_INTERVAL": str(settings.relay_poll_interval),
            "ONESIGNIN_WEBHOOK_TIMEOUT": str(settings.webhook_timeout),
            "ONESIGNIN_SYNC_LEASE": str(settings.sync_lease),
            "ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS": json.dumps(settings.outbound_allowed_networks),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"{role}-{self.port}.log"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "identity.cli", self.role, "--port", str(self.port)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        # Ready when /healthz answers (the app's cleanup contexts have started).
        import httpx2

        async with httpx2.AsyncClient(timeout=30) as http:
            for _ in range(300):
                if self.process.poll() is not None:
                    raise AssertionError(f"{self.role} exited: {self.log.read_text()[-2000:]}")
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.role} did not start: {self.log.read_text()[-2000:]}")

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples on this process's /metrics."""
        import httpx2

        async with httpx2.AsyncClient(timeout=30) as http:
            text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and not line.startswith("#"))

    def kill(self) -> None:
        """As abrupt as a crash: SIGKILL, no cleanup."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), 15)
        except TimeoutError:
            self.process.kill()
            self.process.wait()


async def settled(hub: Hub, client_id: str, timeout: float = 30.0) -> None:
    """Wait until nothing more can reach the service ``client_id`` unless something new happens:
    every committed event consumed by the fan-out (which records the deliveries and notices an
    event calls for in the transaction that marks it consumed), and none of the service's
    deliveries or notices still due or in flight (one in flight is settled once its outcome is
    recorded). What the service received by then is all it will receive."""

    async def nothing_left() -> bool:
        async with hub.app[DB]() as db:
            unconsumed = await db.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.consumed_at.is_(None)))
            service_id = await db.scalar(select(Service.id).where(Service.client_id == client_id))
            due = await db.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.service_id == service_id, Delivery.state == "active", Delivery.wanted_version > Delivery.delivered_version)
            )
            pending = await db.scalar(select(func.count()).select_from(Notice).where(Notice.service_id == service_id, Notice.state == "pending"))
        return not (unconsumed or due or pending)

    await eventually(nothing_left, timeout=timeout, what=f"{client_id} settled")
