"""``onesignin demo``: a person signs in to Store and Forum through the hub with a real browser's
round trips, changes their name in Store, and Forum shows the new name, delivered by the hub's
webhook and by the service's own topic."""

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

import httpx2
import pytest

from demo.run import STATE_FILE, Demo, register, start
from identity.cli import parser
from identity.settings import Settings
from tests.conftest import TEST_SETTINGS, free_port
from tests.support import form

EXTERNAL_KAFKA = os.environ.get("ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS")
SYNC_WAIT = 20.0


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    kafka = {"kafka_topic_prefix": f"t{uuid.uuid4().hex[:10]}.", "kafka_bootstrap_servers": EXTERNAL_KAFKA} if EXTERNAL_KAFKA else {}
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'onesignin.db'}",
        secret_key="d" * 40,
        **(TEST_SETTINGS | kafka),  # type: ignore[arg-type]
    )
    running = await start(settings, port=free_port(), store_port=free_port(), forum_port=free_port())
    try:
        yield running
    finally:
        await running.stop()


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


async def test_a_name_changed_in_store_reaches_forum(demo: Demo) -> None:
    person = Person(demo.person["email"], demo.person["password"])
    store, forum = demo.urls["store"], demo.urls["forum"]
    try:
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
    finally:
        await person.http.aclose()


async def test_registration_is_kept_and_the_webhook_takes_only_signed_deliveries(demo: Demo) -> None:
    state = demo.settings.data_dir / STATE_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    first = state.read_text()
    services, person = await register(demo.hub, demo.settings, demo.urls)
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
    assert (args.command, args.host, args.port) == ("demo", "127.0.0.1", 9000)
