"""``onesignin demo``: the hub with its sync pipeline (and, unless ``ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS``
names a Kafka, the embedded broker), plus the member services "Store" and "Forum", in one process
on three consecutive ports.

At start the two services and a demo person are registered in the hub's database unless they
already are: their credentials are kept in ``demo.json`` in the data dir (readable by its owner
only) and reused on the next start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from demo.member import CALLBACK_PATH, WEBHOOK_PATH, MemberConfig, create_member_app
from identity import admin
from identity.db.models import Account, Service
from identity.settings import Settings
from identity.web import appkeys as K
from identity.web.app import create_app
from schemas.events import service_topic
from sync import kafka
from sync.broker import BrokerError
from sync.runtime import BOOTSTRAP

log = logging.getLogger(__name__)

#: The member services: name and page colour.
SERVICES = (("Store", "#1f5fbf"), ("Forum", "#1a7f37"))
PERSON = {"email": "ann@example.com", "given_name": "Ann", "family_name": "Example"}
STATE_FILE = "demo.json"
#: Addresses to listen on that also answer on 127.0.0.1, where the issuer and services are published.
LISTEN_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::")


class DemoError(Exception):
    """The demo cannot start; the message says why."""


@dataclass
class Demo:
    """The running demo; :meth:`stop` closes everything."""

    settings: Settings
    hub: web.Application
    urls: dict[str, str]
    person: dict[str, Any]
    state_file: Path
    members: dict[str, web.Application] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {**self.urls, "person": self.person, "credentials": str(self.state_file)}

    async def stop(self) -> None:
        runners, self.runners = self.runners, []
        for runner in reversed(runners):
            await runner.cleanup()


def demo_settings(settings: Settings, port: int) -> Settings:
    """The hub's settings for the demo: its issuer is ``http://127.0.0.1:<port>`` (what the
    services discover), and the sync pipeline runs in this process."""
    issuer = f"http://127.0.0.1:{port}"
    if "issuer" in settings.model_fields_set and settings.issuer != issuer:
        log.warning("The demo's issuer is %s; ONESIGNIN_ISSUER=%s is not used.", issuer, settings.issuer)
    return settings.model_copy(update={"issuer": issuer, "sync_in_process": True})


async def start(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    store_port: int | None = None,
    forum_port: int | None = None,
) -> Demo:
    """Start the hub on ``port`` and Store and Forum on the next two ports (or the ones given)."""
    if host not in LISTEN_HOSTS:
        raise DemoError(f"--host must be {', '.join(LISTEN_HOSTS[:-1])} or {LISTEN_HOSTS[-1]} (the demo is published at http://127.0.0.1)")
    ports = {"hub": port, "store": store_port or port + 1, "forum": forum_port or port + 2}
    if any(not 0 < p < 65536 for p in ports.values()):
        raise DemoError(f"the demo needs three ports; {port} leaves too few")
    settings = demo_settings(settings, port)
    urls = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    hub = create_app(settings, migrate=True, sync=True)
    demo = Demo(settings, hub, urls, {}, settings.data_dir / STATE_FILE)
    try:
        await _listen(demo, hub, host, ports["hub"])
        services, demo.person = await register(hub, settings, urls)
        bootstrap = hub[BOOTSTRAP]
        topics = {settings.kafka_topic_prefix + s["topic"]: settings.kafka_service_partitions for s in services.values()}
        # An operator's step: the topics exist before the services subscribe to them.
        await kafka.ensure_topics(settings, bootstrap, topics)
        for name, colour in SERVICES:
            credentials = services[name]
            slug = name.lower()
            options = kafka.client_options(settings, bootstrap) | {"client_id": f"demo-{slug}"}
            config = MemberConfig(
                name=name,
                base_url=urls[slug],
                issuer=settings.issuer,
                client_id=credentials["client_id"],
                client_secret=credentials["client_secret"],
                webhook_secret=credentials["webhook_secret"],
                topic=settings.kafka_topic_prefix + credentials["topic"],
                kafka=options,
                group_id=f"{settings.kafka_topic_prefix}demo-{slug}.profile-sync",
                colour=colour,
            )
            demo.members[slug] = create_member_app(config)
            await _listen(demo, demo.members[slug], host, ports[slug])
    except BaseException:
        await demo.stop()
        raise
    return demo


async def _listen(demo: Demo, app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    try:
        await runner.setup()
    except BrokerError as exc:
        await runner.cleanup()
        raise DemoError(f"{exc} (or set ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS to a Kafka)") from None
    demo.runners.append(runner)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise DemoError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port)") from None


async def register(hub: web.Application, settings: Settings, urls: dict[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Register Store, Forum and the demo person unless ``demo.json`` says they already are;
    return the services' credentials and the person's sign-in details."""
    path = settings.data_dir / STATE_FILE
    state = _load(path)
    services: dict[str, dict[str, Any]] = dict(state.get("services") or {})
    async with hub[K.DB].begin() as db:
        for name, _ in SERVICES:
            services[name] = await _service(db, hub, name, urls[name.lower()], services.get(name))
        person = await _person(db, hub, settings, state.get("person") or {})
        # Saved before the commit: credentials written are never lost, and ones whose service
        # was not committed are replaced on the next start.
        _save(path, {"issuer": settings.issuer, "services": services, "person": person})
    return services, person


async def _service(db: AsyncSession, hub: web.Application, name: str, base: str, kept: dict[str, Any] | None) -> dict[str, Any]:
    redirect_uris, webhook_url = [base + CALLBACK_PATH], base + WEBHOOK_PATH
    row = None
    if kept and kept.get("client_id") and kept.get("webhook_secret"):
        row = await db.scalar(select(Service).where(Service.client_id == kept["client_id"]))
    if row is None:
        created = await admin.add_service(
            db, name=name, redirect_uris=redirect_uris, webhook_url=webhook_url, kafka_topic=True, cipher=hub[K.CIPHER]
        )
        return {
            "client_id": created.client_id,
            "client_secret": created.client_secret,
            "webhook_secret": created.webhook_secret,
            "topic": created.topic,
        }
    assert kept is not None
    # The same service started on other ports: point the hub there.
    if row.redirect_uris != redirect_uris:
        row.redirect_uris = redirect_uris
    if row.webhook_url != webhook_url or row.webhook_disabled_at is not None or not row.topic_enabled:
        await admin.update_service_sync(db, hub[K.CIPHER], row.client_id, webhook_url=webhook_url, kafka_topic=True)
    return {**kept, "topic": service_topic(row.client_id)}


async def _person(db: AsyncSession, hub: web.Application, settings: Settings, kept: dict[str, Any]) -> dict[str, Any]:
    email = PERSON["email"]
    exists = await db.scalar(select(Account.id).where(Account.email == email))
    if exists is not None:
        if kept.get("email") == email:
            return kept
        return {"email": email, "password": None, "note": "this account existed before the demo: use its own password"}
    password = kept.get("password") if kept.get("email") == email and kept.get("password") else "demo-" + secrets.token_urlsafe(12)
    await admin.add_user(
        db, settings, hub[K.HASHER], email=email, password=password,
        given_name=PERSON["given_name"], family_name=PERSON["family_name"], verified=True,
    )
    return {"email": email, "password": password}


def _load(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): registering the demo services again.", path, exc)
        return {}
    return state if isinstance(state, dict) else {}


def _save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` readable by its owner only (it holds client and webhook secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        json.dump(state, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)


async def serve(settings: Settings, *, host: str, port: int, announce: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Start the demo, ``announce`` its URLs and the demo person, and serve until SIGINT or SIGTERM."""
    demo = await start(settings, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        announce(demo.summary())
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await demo.stop()
    return {"status": "stopped"}
