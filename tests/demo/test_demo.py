"""``onesignin demo``: a person signs in to Store and Forum through the hub with a real browser's
round trips, changes their name in Store, and Forum shows the new name, delivered by the hub's
webhook and by the service's own topic. Twice: with the hub in the demo's process, and with the
services alone (``--services-only``) against a hub of their own, as compose runs them: registered in
the hub's database, reading the hub's broker, calling the hub through a proxy, and reached by the
hub's workers at another address than people's browsers use."""

from __future__ import annotations

import asyncio
import html
import os
import re
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import httpx2
import pytest
from aiohttp import web
from multidict import CIMultiDict
from sqlalchemy import select

from demo.run import STATE_FILE, Demo, DemoError, Site, register, start, start_services, webhook_warnings
from identity import appkeys as K
from identity.cli import parser
from identity.db.models import Account, Service
from identity.oidc.logout import logout_token
from identity.settings import Settings
from sync.broker import EmbeddedBroker
from tests.cli import onesignin
from tests.conftest import TEST_SETTINGS, free_port
from tests.support import PRODUCTION_TOPOLOGY, Hub, form
from tests.sync.conftest import FAST_SYNC

pytestmark = pytest.mark.e2e

EXTERNAL_KAFKA = os.environ.get("ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS")
SYNC_WAIT = 20.0


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    kafka = {"kafka_topic_prefix": f"t{uuid.uuid4().hex[:10]}.", "kafka_bootstrap_servers": EXTERNAL_KAFKA} if EXTERNAL_KAFKA else {}
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'onesignin.db'}",
        secret_key="d" * 40,
        # No allowance of the tests' own: the demo lets its hub reach its services on loopback.
        **(TEST_SETTINGS | kafka | {"outbound_allowed_networks": []}),  # type: ignore[arg-type]
    )
    running = await start(settings, port=free_port(), store_port=free_port(), forum_port=free_port())
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker | None]:
    """The hub's broker: the embedded one, or the Kafka named by ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS."""
    if EXTERNAL_KAFKA:
        yield None
        return
    async with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def settings_overrides(broker: EmbeddedBroker | None) -> dict[str, object]:
    """The ``hub`` fixture's settings: its relay and worker run, on the broker above."""
    return FAST_SYNC | {
        "kafka_bootstrap_servers": EXTERNAL_KAFKA or broker.bootstrap,  # type: ignore[union-attr]
        "kafka_topic_prefix": f"t{uuid.uuid4().hex[:10]}." if EXTERNAL_KAFKA else "",
        "kafka_enable_idempotence": bool(EXTERNAL_KAFKA),
    }


HOP_BY_HOP = {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}


class Forwarder:
    """A reverse proxy that records what it forwarded: compose's proxy in front of the hub, or a
    name on compose's network in front of a service."""

    def __init__(self, target: str, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.seen: list[tuple[str, str]] = []
        self.url = ""

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, 0).start()
        self.url = f"http://{self.host}:{self.runner.addresses[0][1]}"

    async def forward(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path))
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        async with self.http.request(
            request.method, self.target + request.path_qs, headers=headers, data=await request.read(), allow_redirects=False
        ) as answer:
            body = await answer.read()
            kept = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP)
            return web.Response(status=answer.status, body=body, headers=kept)

    def paths(self) -> set[str]:
        return {path for _, path in self.seen}

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.http.close()


def services_only_settings(hub: Hub, data_dir: Path) -> Settings:
    """What compose gives the demo services: the hub's database, secret key, issuer and Kafka
    (and a data dir of their own)."""
    s = hub.settings
    return Settings(
        data_dir=data_dir,
        database_url=s.resolved_database_url,
        secret_key=s.secret_key,
        issuer=s.issuer,
        kafka_bootstrap_servers=s.kafka_bootstrap_servers,
        kafka_topic_prefix=s.kafka_topic_prefix,
        kafka_enable_idempotence=s.kafka_enable_idempotence,
        kafka_service_partitions=s.kafka_service_partitions,
        **TEST_SETTINGS,  # type: ignore[arg-type]
    )


class Person:
    """A browser: keeps cookies for every site and follows redirects between them."""

    def __init__(self, email: str, password: str) -> None:
        self.email = email
        self.password = password
        self.http = httpx2.AsyncClient(follow_redirects=True, timeout=30)

    async def submit(self, page: httpx2.Response, action: str, **values: str) -> httpx2.Response:
        f = form(page.text, action)
        return await self.http.post(urljoin(str(page.url), f.action), data=f.fields | values)

    async def sign_in_to(self, service: str) -> httpx2.Response:
        page = await self.http.get(service + "/")
        assert "Sign in with OneSignIn" in page.text
        page = await self.submit(page, "/login")
        if 'name="password"' in page.text:
            page = await self.submit(page, "/i/", email=self.email, password=self.password)
        if "/consent" in page.text:
            page = await self.submit(page, "/i/", decision="allow")
        assert str(page.url) == service + "/", (page.url, page.text[:2000])
        return page


def received_via(page: str) -> set[str]:
    """The channels that brought the version a service's home page shows."""
    found = re.search(r"<th>Received via</th><td>([^<]*)</td>", page)
    return set(html.unescape(found.group(1)).split(", ")) if found else set()


async def until(person: Person, url: str, done: Callable[[str], bool], what: str) -> str:
    """Reload ``url`` (as the page's own refresh does) until ``done(page)``; return the page."""
    deadline = asyncio.get_running_loop().time() + SYNC_WAIT
    while True:
        page = (await person.http.get(url)).text
        if done(page):
            return page
        assert asyncio.get_running_loop().time() < deadline, f"{what} within {SYNC_WAIT} s; the page shows:\n{page}"
        await asyncio.sleep(0.2)


async def name_change_reaches_the_other_service(person: Person, store: str, forum: str) -> None:
    for service in (store, forum):
        page = await person.sign_in_to(service)
        assert "Signed in as Ann Example" in page.text
        # Linking sends the service a snapshot, on its webhook and on its topic.
        await until(person, service + "/", lambda p: {"webhook", "topic"} <= received_via(p), f"no snapshot reached {service}")

    page = await person.http.get(store + "/profile")
    page = await person.submit(page, "/profile", given_name="Anna", family_name="Smith")
    assert str(page.url) == store + "/"
    assert "Signed in as Anna Smith" in page.text
    # Store made the change: it has the hub's answer, and is not sent its own change back.
    assert received_via(page.text) == {"this service's change"}

    text = await until(
        person,
        forum + "/",
        lambda p: "Signed in as Anna Smith" in p and received_via(p) == {"webhook", "topic"},
        "Forum did not show the new name from both channels",
    )
    assert "<td>Smith</td>" in text

    # A form without the session's CSRF token is refused.
    refused = await person.http.post(forum + "/profile", data={"given_name": "Eve", "csrf_token": "forged"})
    assert refused.status_code == 403


async def test_a_name_changed_in_store_reaches_forum(demo: Demo) -> None:
    person = Person(demo.person["email"], demo.person["password"])
    try:
        await name_change_reaches_the_other_service(person, demo.urls["store"], demo.urls["forum"])
    finally:
        await person.http.aclose()


@PRODUCTION_TOPOLOGY
async def test_the_services_alone_join_a_running_hub(hub: Hub, tmp_path: Path) -> None:
    """Store and Forum as two processes sharing a data dir, as the two compose services run them
    (``--services-only --only store|forum``), against a hub with its own relay and worker."""
    settings = services_only_settings(hub, tmp_path / "demo")
    ports = {"store": free_port(), "forum": free_port()}
    # The services call the hub through a proxy, not at the issuer's address.
    proxy = Forwarder(hub.url)
    # The hub's workers reach each service at another address than browsers do, over plain http
    # outside loopback's named hosts (127.0.0.2 stands for the compose network's `store`).
    networks = {slug: Forwarder(f"http://127.0.0.1:{port}", host="127.0.0.2") for slug, port in ports.items()}
    started: dict[str, Demo] = {}
    person = None
    try:
        for forwarder in (proxy, *networks.values()):
            await forwarder.start()

        def run(only: str) -> asyncio.Task[Demo]:
            return asyncio.create_task(start_services(
                settings, hub_url=proxy.url, store_port=ports["store"], forum_port=ports["forum"], only=only,
                webhook_bases={slug: f.url for slug, f in networks.items()}, allow_http_webhooks=True,
            ))

        tasks = {only: run(only) for only in ("store", "forum")}
        for only, task in tasks.items():
            started[only] = await task
        store, forum = started["store"], started["forum"]
        # One registration, seen by both: the same person and password, and the issuer for people.
        assert store.person == forum.person and store.person["password"]
        assert store.urls == {"hub": hub.url, "store": f"http://127.0.0.1:{ports['store']}"}
        assert forum.urls == {"hub": hub.url, "forum": f"http://127.0.0.1:{ports['forum']}"}
        state = settings.data_dir / STATE_FILE
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        async with hub.app[K.DB]() as db:
            rows = {row.name: row for row in (await db.scalars(select(Service))).all()}
        assert set(rows) == {"Store", "Forum"}
        for name, slug in (("Store", "store"), ("Forum", "forum")):
            assert rows[name].webhook_url == networks[slug].url + "/webhooks/onesignin"
            assert rows[name].backchannel_logout_uri == networks[slug].url + "/backchannel-logout"
            assert rows[name].post_logout_redirect_uris == [f"http://127.0.0.1:{ports[slug]}/"]
            assert rows[name].redirect_uris == [f"http://127.0.0.1:{ports[slug]}/oidc/callback"]
            assert rows[name].topic_enabled

        person = Person(store.person["email"], store.person["password"])
        await name_change_reaches_the_other_service(person, store.urls["store"], forum.urls["forum"])

        # Discovery, the token exchange, the keys and the API went through the proxy; browsers
        # went to the issuer (the hub's own address), and webhooks to the services' network names.
        assert {"/.well-known/openid-configuration", "/token", "/api/v1/me"} <= proxy.paths(), proxy.seen
        assert any("jwk" in path for path in proxy.paths()), proxy.seen
        assert not any(path.startswith(("/authorize", "/i/")) for path in proxy.paths()), proxy.seen
        for slug, forwarder in networks.items():
            assert ("POST", "/webhooks/onesignin") in forwarder.seen, (slug, forwarder.seen)

        # Started again, Forum keeps its registration (and Store's stays in the shared state).
        kept = state.read_text()
        await started.pop("forum").stop()
        # A service registered before its logout URIs were: the next start registers them.
        async with hub.app[K.DB].begin() as db:
            forum_row = await db.scalar(select(Service).where(Service.name == "Forum"))
            assert forum_row is not None
            forum_row.backchannel_logout_uri, forum_row.post_logout_redirect_uris = None, []
        started["forum"] = await run("forum")
        assert started["forum"].person == store.person
        assert state.read_text() == kept
        async with hub.app[K.DB]() as db:
            assert sorted(await db.scalars(select(Service.name))) == ["Forum", "Store"]
            forum_row = await db.scalar(select(Service).where(Service.name == "Forum"))
        assert forum_row is not None and forum_row.backchannel_logout_uri == networks["forum"].url + "/backchannel-logout"
        assert forum_row.post_logout_redirect_uris == [f"http://127.0.0.1:{ports['forum']}/"]
    finally:
        if person is not None:
            await person.http.aclose()
        for running in started.values():
            await running.stop()
        for forwarder in (proxy, *networks.values()):
            if forwarder.url:
                await forwarder.close()


async def _signed_in_to_both(demo: Demo) -> tuple[Person, str, str]:
    person = Person(demo.person["email"], demo.person["password"])
    store, forum = demo.urls["store"], demo.urls["forum"]
    for service in (store, forum):
        assert "Signed in as Ann Example" in (await person.sign_in_to(service)).text
    return person, store, forum


def _signed_out(page: str) -> bool:
    return "Sign in with OneSignIn" in page and "Signed in as" not in page


async def test_signing_out_of_store_signs_the_person_out_of_forum_too(demo: Demo) -> None:
    """Store's "Sign out" ends its session, then the hub's (RP-initiated logout with the ID token
    as hint); the hub tells Forum by back-channel, and Forum's page shows the person signed out."""
    assert demo.hub is not None
    async with demo.hub[K.DB]() as db:
        rows = {row.name: row for row in (await db.scalars(select(Service))).all()}
    for name, slug in (("Store", "store"), ("Forum", "forum")):
        assert rows[name].backchannel_logout_uri == demo.urls[slug] + "/backchannel-logout"
        assert rows[name].post_logout_redirect_uris == [demo.urls[slug] + "/"]
    person, store, forum = await _signed_in_to_both(demo)
    try:
        home = await person.http.get(store + "/")
        out = await person.submit(home, "/logout")
        # Through the hub's end-session endpoint and back to Store's home page, signed out.
        assert str(out.url) == store + "/" and _signed_out(out.text), (out.url, out.text[:1000])
        assert any("/end-session" in str(r.url) or "end_session" in str(r.url) for r in out.history), [str(r.url) for r in out.history]
        await until(person, forum + "/", _signed_out, "Forum did not hear of the sign-out")
        # The hub session ended too: the account page asks for a sign-in again.
        account = await person.http.get(demo.urls["hub"] + "/account")
        assert 'name="password"' in account.text
    finally:
        await person.http.aclose()


async def test_signing_out_at_the_hub_signs_out_of_both_services(demo: Demo) -> None:
    person, store, forum = await _signed_in_to_both(demo)
    try:
        account = await person.http.get(demo.urls["hub"] + "/account")
        assert account.status_code == 200 and 'action="/sign-out"' in account.text
        await person.submit(account, "/sign-out")
        for service in (store, forum):
            await until(person, service + "/", _signed_out, f"{service} did not hear of the sign-out")
    finally:
        await person.http.aclose()


async def test_a_bad_logout_token_is_refused_and_ends_nothing(demo: Demo) -> None:
    person, store, forum = await _signed_in_to_both(demo)
    try:
        async with httpx2.AsyncClient(timeout=30) as http:
            missing = await http.post(forum + "/backchannel-logout", data={})
            forged = await http.post(forum + "/backchannel-logout", data={"logout_token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."})
            # Signed by the hub, but for Store: not for Forum to act on.
            assert demo.hub is not None
            async with demo.hub[K.DB]() as db:
                rows = {row.name: row for row in (await db.scalars(select(Service))).all()}
                sub = await db.scalar(select(Account.sub).where(Account.email == demo.person["email"]))
            assert sub is not None
            keys, issuer = demo.hub[K.PROVIDER].keys, demo.settings.issuer
            other = await http.post(forum + "/backchannel-logout", data={"logout_token": logout_token(keys, issuer, rows["Store"], sub, "no-such-sid")})
            assert (missing.status_code, forged.status_code, other.status_code) == (400, 400, 400)
            assert "Signed in as Ann Example" in (await person.http.get(forum + "/")).text
            # Forum's own, for a hub session it never saw: the person stays signed in; then one for its sid.
            unknown = await http.post(forum + "/backchannel-logout", data={"logout_token": logout_token(keys, issuer, rows["Forum"], sub, "no-such-sid")})
            assert unknown.status_code == 200
            assert "Signed in as Ann Example" in (await person.http.get(forum + "/")).text
    finally:
        await person.http.aclose()


async def test_the_services_alone_warn_of_a_webhook_the_hubs_workers_may_not_reach(tmp_path: Path) -> None:
    store = Site("store", 8101, "http://127.0.0.1:8101", "http://127.0.0.2:8101/webhooks/onesignin", plain_http_webhook=True)
    forum = Site("forum", 8102, "http://127.0.0.1:8102", "http://localhost:8102/webhooks/onesignin", plain_http_webhook=True)
    nowhere = Site("forum", 8102, "http://127.0.0.1:8102", "https://forum.invalid/webhooks/onesignin")
    refused = Settings(data_dir=tmp_path, secret_key="d" * 40)
    warnings = await webhook_warnings(refused, [store, forum, nowhere])
    assert len(warnings) == 2
    assert warnings[0].startswith("Store's webhook http://127.0.0.2:8101/webhooks/onesignin is at 127.0.0.2,")
    assert warnings[1].startswith("Forum's webhook http://localhost:8102/webhooks/onesignin is at ")
    assert all("ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS" in w for w in warnings)
    allowed = refused.model_copy(update={"outbound_allowed_networks": ["127.0.0.0/8"]})
    assert await webhook_warnings(allowed, [store, forum, nowhere]) == []


async def test_the_services_alone_refuse_what_cannot_work(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="d" * 40, kafka_bootstrap_servers="127.0.0.1:9092", **TEST_SETTINGS)  # type: ignore[arg-type]
    # The hub's registration rule stays: a plain-http webhook outside loopback needs the demo's exception.
    with pytest.raises(DemoError, match="--store-webhook-base must use https.*--allow-http-webhooks"):
        await start_services(settings, hub_url="http://proxy:8000", webhook_bases={"store": "http://store:8101"})
    with pytest.raises(DemoError, match="--hub-url"):
        await start_services(settings, hub_url="proxy:8000")
    with pytest.raises(DemoError, match="ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS"):
        await start_services(settings.model_copy(update={"kafka_bootstrap_servers": None}), hub_url="http://proxy:8000")
    with pytest.raises(DemoError, match="ONESIGNIN_SECRET_KEY"):
        await start_services(settings.model_copy(update={"secret_key": None}), hub_url="http://proxy:8000")
    assert not (tmp_path / STATE_FILE).exists()


async def test_registration_is_kept_and_the_webhook_takes_only_signed_deliveries(demo: Demo) -> None:
    state = demo.settings.data_dir / STATE_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    first = state.read_text()
    assert demo.hub is not None
    services, person = await register(demo.hub[K.DB], demo.hub[K.CIPHER], demo.hub[K.HASHER], demo.settings, demo.sites)
    assert services["Store"]["client_id"] in first and services["Forum"]["client_id"] in first
    assert person == demo.person
    assert state.read_text() == first

    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            demo.urls["forum"] + "/webhooks/onesignin",
            content=b'{"type": "profile.updated", "data": {"sub": "x", "version": 99, "profile": {}}}',
            headers={"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,Zm9yZ2Vk"},
        )
    assert response.status_code == 401


def test_the_command_line_knows_the_demo() -> None:
    args = parser().parse_args(["demo", "--port", "9000"])
    assert (args.command, args.host, args.port, args.services_only) == ("demo", "127.0.0.1", 9000, False)
    args = parser().parse_args(
        ["demo", "--services-only", "--hub-url", "http://proxy:8000", "--only", "forum", "--forum-port", "8102",
         "--forum-webhook-base", "http://forum:8102", "--allow-http-webhooks"]
    )
    assert (args.services_only, args.hub_url, args.only, args.forum_port, args.forum_webhook_base, args.allow_http_webhooks) == (
        True, "http://proxy:8000", "forum", 8102, "http://forum:8102", True
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--services-only"], "--services-only needs --hub-url"),
        (["demo", "--hub-url", "http://127.0.0.1:8000"], "--hub-url only with --services-only"),
        (["demo", "--services-only", "--hub-url", "http://127.0.0.1:8000", "--port", "8000"], "--port is the hub's port"),
        (["demo", "--services-only", "--hub-url", "http://h:8000", "--only", "store", "--forum-port", "8102"], "--only store runs no Forum"),
    ],
)
def test_the_command_line_refuses_mixed_modes(argv: list[str], message: str) -> None:
    # As a process of its own: the command sets up the process's logging (the root logger at
    # INFO, writing to its standard error), which would stay behind in the test process.
    refused = onesignin(dict(os.environ), *argv)
    assert refused.returncode == 2
    assert message in refused.stderr
