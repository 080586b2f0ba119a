"""``onesignin demo``: the member services "Store" and "Forum", in one of two ways.

* All in one (the default): the hub too, with its sync pipeline (and, unless
  ``ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS`` names a Kafka, the embedded broker), in one process on
  three consecutive ports (:func:`start`).
* Services only (``--services-only``): no hub here. The services join a hub that runs elsewhere
  (the compose topology: hub replicas behind a proxy, Postgres, Kafka, relays and workers). They
  are registered in that hub's database (``ONESIGNIN_DATABASE_URL``, with its
  ``ONESIGNIN_SECRET_KEY``), read their topics at ``ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS``, and call
  the hub at ``--hub-url`` while people's browsers use the issuer (:func:`start_services`).

Either way, the services and a demo person are registered unless they already are: their
credentials are kept in ``demo.json`` in the data dir (readable by its owner only) and reused on
the next start. Registration holds a lock beside that file, so Store and Forum may start as two
processes sharing the data dir and see each other's registration."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiokafka.errors import KafkaError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from demo.member import BACKCHANNEL_LOGOUT_PATH, CALLBACK_PATH, WEBHOOK_PATH, MemberConfig, create_member_app
from identity import admin, outbound
from identity import appkeys as K
from identity.accounts.passwords import PasswordHasher
from identity.db.engine import create_engine, create_sessionmaker
from identity.db.migrate import upgrade
from identity.db.models import Account, Service, utcnow
from identity.private_files import private_dir
from identity.sealing import KeyCipher, new_webhook_secret, seal_webhook_secret
from identity.settings import Settings
from identity.web.app import create_app
from schemas.events import service_topic
from sync import kafka
from sync.broker import BrokerError
from sync.runtime import BOOTSTRAP

try:
    import fcntl
except ImportError:  # not on Windows: registration is then not guarded against a second process
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: The member services, by slug: name and page colour.
SERVICES = {"store": ("Store", "#1f5fbf"), "forum": ("Forum", "#1a7f37")}
PERSON = {"email": "ann@example.com", "given_name": "Ann", "family_name": "Example"}
STATE_FILE = "demo.json"
#: Addresses to listen on that also answer on 127.0.0.1, where the issuer and services are published.
LISTEN_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::")
#: ``--services-only`` ports when none are given (the all-in-one demo's, beside a hub on 8000).
SERVICE_PORTS = {"store": 8001, "forum": 8002}


class DemoError(Exception):
    """The demo cannot start; the message says why."""


@dataclass(frozen=True)
class Site:
    """One member service: where people's browsers reach it and where the hub's workers
    deliver its webhooks."""

    slug: str
    port: int
    #: ``http://127.0.0.1:<port>``: its redirect URI is here.
    public_url: str
    webhook_url: str
    #: A plain-http webhook outside loopback, allowed by ``--allow-http-webhooks`` (see
    #: :func:`_private_network_webhook`).
    plain_http_webhook: bool = False

    @property
    def backchannel_logout_uri(self) -> str:
        """Where the hub POSTs logout tokens: beside the webhook, where the hub reaches the service."""
        return self.webhook_url[: -len(WEBHOOK_PATH)] + BACKCHANNEL_LOGOUT_PATH

    @property
    def post_logout_redirect_uris(self) -> list[str]:
        return [self.public_url + "/"]

    @property
    def name(self) -> str:
        return SERVICES[self.slug][0]

    @property
    def colour(self) -> str:
        return SERVICES[self.slug][1]


@dataclass
class Demo:
    """The running demo; :meth:`stop` closes everything."""

    settings: Settings
    urls: dict[str, str]
    person: dict[str, Any]
    state_file: Path
    sites: list[Site]
    #: The hub, when it runs in this process (not with ``--services-only``).
    hub: web.Application | None = None
    members: dict[str, web.Application] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {**self.urls, "person": self.person, "credentials": str(self.state_file)}

    async def stop(self) -> None:
        runners, self.runners = self.runners, []
        for runner in reversed(runners):
            await runner.cleanup()


#: Where the demo's services listen, beside the hub: its webhooks may reach them there.
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


def demo_settings(settings: Settings, port: int) -> Settings:
    """The hub's settings for the demo: its issuer is ``http://127.0.0.1:<port>`` (what the
    services discover), the sync pipeline runs in this process, and its outbound calls may
    reach loopback, where Store and Forum listen (a hub reaches public addresses only unless
    ``ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS`` says otherwise; the demo is for development)."""
    issuer = f"http://127.0.0.1:{port}"
    if "issuer" in settings.model_fields_set and settings.issuer != issuer:
        log.warning("The demo's issuer is %s; ONESIGNIN_ISSUER=%s is not used.", issuer, settings.issuer)
    allowed = settings.outbound_allowed_networks + [n for n in LOOPBACK_NETWORKS if n not in settings.outbound_allowed_networks]
    return settings.model_copy(update={"issuer": issuer, "sync_in_process": True, "outbound_allowed_networks": allowed})


def _check_host(host: str) -> None:
    if host not in LISTEN_HOSTS:
        raise DemoError(f"--host must be {', '.join(LISTEN_HOSTS[:-1])} or {LISTEN_HOSTS[-1]} (the demo is published at http://127.0.0.1)")


def _check_ports(ports: Mapping[str, int]) -> None:
    for what, port in ports.items():
        if not 0 < port < 65536:
            raise DemoError(f"the {what} port {port} is not a port (1-65535)")
    if len(set(ports.values())) != len(ports):
        raise DemoError(f"the ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}")


def _sites(ports: Mapping[str, int], webhook_bases: Mapping[str, str | None], allow_http_webhooks: bool) -> list[Site]:
    sites = []
    for slug, port in ports.items():
        public = f"http://127.0.0.1:{port}"
        base = (webhook_bases.get(slug) or public).rstrip("/")
        url, plain = base + WEBHOOK_PATH, False
        try:
            admin.check_uri(url, f"--{slug}-webhook-base")
        except admin.InvalidInput as exc:
            parts = urlsplit(url)
            if not (allow_http_webhooks and parts.scheme == "http" and parts.hostname and not parts.query and not parts.fragment):
                hint = " (add --allow-http-webhooks if the hub's workers reach it on a private network)" if parts.scheme == "http" else ""
                raise DemoError(f"{exc}{hint}") from None
            plain = True
        sites.append(Site(slug, port, public, url, plain))
    return sites


async def start(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    store_port: int | None = None,
    forum_port: int | None = None,
) -> Demo:
    """Start the hub on ``port`` and Store and Forum on the next two ports (or the ones given)."""
    _check_host(host)
    ports = {"hub": port, "store": store_port or port + 1, "forum": forum_port or port + 2}
    _check_ports(ports)
    settings = demo_settings(settings, port)
    sites = _sites({slug: ports[slug] for slug in SERVICES}, {}, False)
    hub = create_app(settings, migrate=True, sync=True)
    urls = {"hub": settings.issuer} | {s.slug: s.public_url for s in sites}
    demo = Demo(settings, urls, {}, settings.data_dir / STATE_FILE, sites, hub=hub)
    try:
        await _listen(demo, hub, host, port)
        async with registration_lock(settings):
            services, demo.person = await register(hub[K.DB], hub[K.CIPHER], hub[K.HASHER], settings, sites)
        await _start_members(demo, services, hub[BOOTSTRAP], host, hub_url=None)
    except BaseException:
        await demo.stop()
        raise
    return demo


async def start_services(
    settings: Settings,
    *,
    hub_url: str,
    host: str = "127.0.0.1",
    store_port: int = SERVICE_PORTS["store"],
    forum_port: int = SERVICE_PORTS["forum"],
    only: str | None = None,
    webhook_bases: Mapping[str, str | None] | None = None,
    allow_http_webhooks: bool = False,
) -> Demo:
    """Start Store and Forum (or ``only`` one of them) against a hub running elsewhere.

    ``settings`` are the hub's: its database, secret key, issuer and Kafka. The services call the
    hub at ``hub_url`` (discovery, tokens, keys, API), which may differ from the issuer, e.g. the
    proxy's name on a container network; people's browsers still go to the issuer. The hub's
    workers POST each service's webhooks to ``webhook_bases[slug]`` (default its public URL)."""
    _check_host(host)
    if only is not None and only not in SERVICES:
        raise DemoError(f"--only must be {' or '.join(SERVICES)}")
    parts = urlsplit(hub_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise DemoError(f"--hub-url must be an absolute http(s) URL such as http://127.0.0.1:8000: {hub_url!r}")
    bootstrap = settings.kafka_bootstrap_servers
    if not bootstrap:
        raise DemoError("set ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS to the hub's Kafka (--services-only starts no broker)")
    if not settings.secret_key and not (settings.data_dir / "secret.key").exists():
        raise DemoError("set ONESIGNIN_SECRET_KEY to the hub's secret key (the webhook secrets are encrypted with it)")
    ports = {slug: p for slug, p in (("store", store_port), ("forum", forum_port)) if only in (None, slug)}
    _check_ports(ports)
    sites = _sites(ports, webhook_bases or {}, allow_http_webhooks)
    for warning in await webhook_warnings(settings, sites):
        log.warning(warning)
    urls = {"hub": settings.issuer} | {s.slug: s.public_url for s in sites}
    demo = Demo(settings, urls, {}, settings.data_dir / STATE_FILE, sites)
    try:
        engine = create_engine(settings)
        try:
            async with registration_lock(settings):
                if settings.is_embedded:
                    await upgrade(engine)
                hasher = PasswordHasher(
                    memory_cost=settings.argon2_memory_cost, time_cost=settings.argon2_time_cost, parallelism=settings.argon2_parallelism
                )
                cipher = KeyCipher(settings.resolved_secret_key())
                services, demo.person = await register(create_sessionmaker(engine), cipher, hasher, settings, sites)
        except (OSError, SQLAlchemyError) as exc:
            raise DemoError(f"cannot register the demo services in the hub's database: {type(exc).__name__}: {exc}") from None
        finally:
            await engine.dispose()
        await _start_members(demo, services, bootstrap, host, hub_url=hub_url.rstrip("/"))
    except BaseException:
        await demo.stop()
        raise
    return demo


async def webhook_warnings(settings: Settings, sites: Sequence[Site]) -> list[str]:
    """A line for each site whose webhook resolves, here, only to addresses the hub's outbound
    policy refuses under ``settings`` (the hub's, which its workers share in compose): its
    deliveries would fail until ``ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS`` allows that network. A name
    that does not resolve here is left to the workers, which may see other names."""
    policy = outbound.Policy.of(settings)
    warnings = []
    for site in sites:
        host = urlsplit(site.webhook_url).hostname or ""
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = sorted({str(info[4][0]) for info in found})
        if addresses and not any(policy.allows(a) for a in addresses):
            warnings.append(
                f"{site.name}'s webhook {site.webhook_url} is at {', '.join(addresses)}, which the hub's workers "
                "reach only if ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS allows its network (public addresses only otherwise)."
            )
    return warnings


async def _start_members(demo: Demo, services: dict[str, dict[str, Any]], bootstrap: str, host: str, *, hub_url: str | None) -> None:
    settings = demo.settings
    topics = {settings.kafka_topic_prefix + services[s.name]["topic"]: settings.kafka_service_partitions for s in demo.sites}
    # An operator's step: the topics exist before the services subscribe to them, made as the
    # workers make them (on the embedded broker, with its own partition count).
    made = kafka.Topics(settings, bootstrap)
    try:
        await made.check(topics, broker_counts=True)
    except KafkaError as exc:
        raise DemoError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    finally:
        await made.close()
    for site in demo.sites:
        credentials = services[site.name]
        options = kafka.client_options(settings, bootstrap) | {"client_id": f"demo-{site.slug}"}
        config = MemberConfig(
            name=site.name,
            base_url=site.public_url,
            issuer=settings.issuer,
            client_id=credentials["client_id"],
            client_secret=credentials["client_secret"],
            webhook_secret=credentials["webhook_secret"],
            topic=settings.kafka_topic_prefix + credentials["topic"],
            kafka=options,
            group_id=f"{settings.kafka_topic_prefix}demo-{site.slug}.profile-sync",
            colour=site.colour,
            hub_url=hub_url,
        )
        demo.members[site.slug] = create_member_app(config)
        await _listen(demo, demo.members[site.slug], host, site.port)


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
        raise DemoError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose other ports)") from None


async def register(
    sessions: async_sessionmaker[AsyncSession],
    cipher: KeyCipher,
    hasher: PasswordHasher,
    settings: Settings,
    sites: Sequence[Site],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Register the services of ``sites`` and the demo person unless ``demo.json`` says they
    already are; return every service's credentials and the person's sign-in details. (Another
    process may share the data dir: hold :func:`registration_lock`.)"""
    path = settings.data_dir / STATE_FILE
    state = _load(path)
    services: dict[str, dict[str, Any]] = dict(state.get("services") or {})
    async with sessions.begin() as db:
        for site in sites:
            services[site.name] = await _service(db, cipher, site, services.get(site.name))
        person = await _person(db, settings, hasher, state.get("person") or {})
        # Saved before the commit: credentials written are never lost, and ones whose service
        # was not committed are replaced on the next start.
        _save(path, {"issuer": settings.issuer, "services": services, "person": person})
    return services, person


async def _service(db: AsyncSession, cipher: KeyCipher, site: Site, kept: dict[str, Any] | None) -> dict[str, Any]:
    redirect_uris = [site.public_url + CALLBACK_PATH]
    row = None
    if kept and kept.get("client_id") and kept.get("webhook_secret"):
        row = await db.scalar(select(Service).where(Service.client_id == kept["client_id"]))
    if row is None:
        created = await admin.add_service(
            db,
            name=site.name,
            redirect_uris=redirect_uris,
            webhook_url=None if site.plain_http_webhook else site.webhook_url,
            kafka_topic=True,
            cipher=cipher,
        )
        credentials = {
            "client_id": created.client_id,
            "client_secret": created.client_secret,
            "webhook_secret": created.webhook_secret,
            "topic": created.topic,
        }
        row = await db.scalar(select(Service).where(Service.client_id == created.client_id))
        assert row is not None
        if site.plain_http_webhook:
            credentials["webhook_secret"] = _private_network_webhook(row, cipher, site.webhook_url)
        _logout_uris(row, site)
        return credentials
    assert kept is not None
    kept = {**kept, "topic": service_topic(row.client_id)}
    # The same service started on other ports or another network: point the hub there.
    if row.redirect_uris != redirect_uris:
        row.redirect_uris = redirect_uris
    _logout_uris(row, site)
    if row.webhook_url != site.webhook_url or row.webhook_disabled_at is not None or not row.topic_enabled or not row.webhook_secret:
        if site.plain_http_webhook:
            secret = _private_network_webhook(row, cipher, site.webhook_url)
        else:
            changed = await admin.update_service_sync(db, cipher, row.client_id, webhook_url=site.webhook_url, kafka_topic=True)
            secret = changed.webhook_secret
        if secret:
            kept["webhook_secret"] = secret
    return kept


def _logout_uris(row: Service, site: Site) -> None:
    """Register the service's back-channel logout URI and post-logout redirect URI (also for a
    service registered before, or started on other ports). Written like the private-network
    webhook: the back-channel URI may be plain http on the compose network."""
    if row.backchannel_logout_uri != site.backchannel_logout_uri:
        row.backchannel_logout_uri = site.backchannel_logout_uri
    if list(row.post_logout_redirect_uris or []) != site.post_logout_redirect_uris:
        row.post_logout_redirect_uris = site.post_logout_redirect_uris


def _private_network_webhook(row: Service, cipher: KeyCipher, url: str) -> str | None:
    """Point ``row``'s webhook at ``url``, a plain-http URL outside loopback; return its secret
    when a new one was made.

    The hub's own registration (``onesignin services``, :func:`identity.admin.check_uri`) takes
    plain http on loopback only, and that rule stays for every other service. The demo's services
    may instead run beside the hub's workers on a private network (the compose network, where
    the workers reach ``http://store:8101`` by name): only with ``--allow-http-webhooks``, and only
    on this path, is such a URL written directly. The secret is made and sealed as the hub's
    registration does, and the webhook starts healthy."""
    secret = None
    row.webhook_url = url
    if not row.webhook_secret:
        secret = new_webhook_secret()
        row.webhook_secret = seal_webhook_secret(cipher, secret, row.client_id)
        row.webhook_secret_set_at = utcnow()
    row.webhook_disabled_at = row.webhook_quarantined_at = row.webhook_failing_since = None
    row.webhook_last_error = None
    row.topic_enabled = True
    return secret


async def _person(db: AsyncSession, settings: Settings, hasher: PasswordHasher, kept: dict[str, Any]) -> dict[str, Any]:
    email = PERSON["email"]
    exists = await db.scalar(select(Account.id).where(Account.email == email))
    if exists is not None:
        if kept.get("email") == email:
            return kept
        return {"email": email, "password": None, "note": "this account existed before the demo: use its own password"}
    password = kept.get("password") if kept.get("email") == email and kept.get("password") else "demo-" + secrets.token_urlsafe(12)
    await admin.add_user(
        db, settings, hasher, email=email, password=password,
        given_name=PERSON["given_name"], family_name=PERSON["family_name"], verified=True,
    )
    return {"email": email, "password": password}


@contextlib.asynccontextmanager
async def registration_lock(settings: Settings) -> AsyncIterator[None]:
    """Hold an exclusive lock on ``demo.json.lock`` in the data dir while registering: Store and
    Forum may start as two processes sharing it (two compose services on one volume), and each
    must see the other's registration and the same demo person. The lock goes with the file's
    descriptor, also when the process dies."""
    path = settings.data_dir / STATE_FILE
    private_dir(path.parent)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)


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
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        json.dump(state, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)


async def serve(start_demo: Callable[[], Awaitable[Demo]], *, announce: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Start the demo (:func:`start` or :func:`start_services`, bound to their arguments),
    ``announce`` its URLs and the demo person, and serve until SIGINT or SIGTERM."""
    demo = await start_demo()
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
