"""The link lifecycle as a service and a person see it: a service reads and cancels only its own
links (anything else is the same 404 as an unknown ``sub``); cancelling revokes the person's
tokens and consent and logs the service's sessions out; the person unlinks a service at the hub
after a confirmation step, and is shown each service's own cancellation route."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, select

from identity.appkeys import DB
from identity.db.models import Consent, Delivery, Link, Notice, Service, Token, utcnow
from schemas.events import service_notice
from tests.cli import onesignin
from tests.support import (
    Browser,
    Hub,
    RelyingParty,
    form,
    location_params,
    sign_in_through,
)

EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass
class LogoutReceiver:
    url: str = ""
    tokens: list[str] = field(default_factory=list)


@pytest.fixture
async def logouts() -> AsyncIterator[LogoutReceiver]:
    found = LogoutReceiver()

    async def handle(request: web.Request) -> web.Response:
        found.tokens.append(str((await request.post())["logout_token"]))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/logout", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = str(server.make_url("/logout"))
    try:
        yield found
    finally:
        await server.close()


async def member(hub: Hub, name: str, **kwargs: Any) -> RelyingParty:
    service = await hub.add_service(name=name, **kwargs)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    return rp


async def service_token(rp: RelyingParty) -> str:
    response = await rp.post(
        "/token", {"grant_type": "client_credentials", "scope": "openid"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def call(hub: Hub, method: str, path: str, token: str | None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        return await http.request(method, path, headers=headers)


def same_answer(a: httpx2.Response, b: httpx2.Response) -> None:
    """Byte for byte the same status, headers (but the date and each request's own id) and body."""
    assert a.status_code == b.status_code
    assert a.content == b.content
    assert {k: v for k, v in a.headers.items() if k not in ("date", "x-request-id")} == {
        k: v for k, v in b.headers.items() if k not in ("date", "x-request-id")
    }


async def sub_of(hub: Hub, email: str = "ann@example.com") -> str:
    from identity.accounts.store import find_by_email

    async with hub.app[DB]() as db:
        account = await find_by_email(db, email)
        assert account is not None
        return account.sub


async def test_a_service_sees_only_its_own_links(hub: Hub, browser: Browser) -> None:
    store = await member(hub, "Store")
    forum = await member(hub, "Forum")
    await hub.add_user(verified=True)
    await hub.add_user(email="bob@example.com", verified=True)
    await sign_in_through(store, browser)
    ann = await sub_of(hub)
    bob = await sub_of(hub, "bob@example.com")

    mine = await call(hub, "GET", f"/api/v1/links/{ann}", await service_token(store))
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert (
        body["sub"] == ann and body["status"] == "active" and body["ended_at"] is None
    )
    assert set(body["scope"].split()) == set(store.scope.split())
    assert body["created_at"] and body["updated_at"]
    assert mine.headers["cache-control"] == "no-store"

    forum_token = await service_token(forum)
    unknown = await call(hub, "GET", "/api/v1/links/no-such-person", forum_token)
    assert unknown.status_code == 404
    # Ann is linked to the store, not the forum; Bob to nobody; a sub too long to exist: the forum
    # cannot tell any of them from an unknown sub, reading or cancelling.
    for sub in (ann, bob, "x" * 65):
        same_answer(
            await call(hub, "GET", f"/api/v1/links/{sub}", forum_token), unknown
        )
        same_answer(
            await call(hub, "POST", f"/api/v1/links/{sub}/cancel", forum_token), unknown
        )
    same_answer(
        await call(hub, "POST", "/api/v1/links/no-such-person/cancel", forum_token),
        unknown,
    )
    # The forum's attempt changed nothing for the store.
    assert (
        await call(hub, "GET", f"/api/v1/links/{ann}", await service_token(store))
    ).json()["status"] == "active"

    # Without a service's own token there is nothing to see.
    assert (await call(hub, "GET", f"/api/v1/links/{ann}", None)).status_code == 401
    assert (
        await call(hub, "POST", f"/api/v1/links/{ann}/cancel", "not-a-token")
    ).status_code == 401
    token, _ = await sign_in_through(store, browser)
    person = await call(hub, "GET", f"/api/v1/links/{ann}", token["access_token"])
    assert person.status_code == 401 and person.json()["error"] == "invalid_token"


async def test_cancelling_revokes_tokens_consent_and_logs_the_service_out(
    hub: Hub, browser: Browser, logouts: LogoutReceiver
) -> None:
    store = await member(hub, "Store", backchannel_logout_uri=logouts.url)
    forum = await member(hub, "Forum")
    await hub.add_user(verified=True)
    store_tokens, _ = await sign_in_through(store, browser)
    forum_tokens, _ = await sign_in_through(forum, browser)
    ann = await sub_of(hub)

    cancelled = await call(
        hub, "POST", f"/api/v1/links/{ann}/cancel", await service_token(store)
    )
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["ended_at"] is not None

    # The store's tokens for Ann are dead, refresh included; the forum's are not.
    assert (await hub.userinfo(store_tokens["access_token"])).status_code == 401
    refresh = await store.post(
        "/token",
        {"grant_type": "refresh_token", "refresh_token": store_tokens["refresh_token"]},
    )
    assert refresh.status_code == 400
    assert (await hub.userinfo(forum_tokens["access_token"])).status_code == 200

    # The store's session for Ann got a signed back-channel logout token.
    assert len(logouts.tokens) == 1
    async with httpx2.AsyncClient(timeout=30) as http:
        jwks = KeySet.import_key_set((await http.get(f"{hub.url}/jwks")).json())
    claims = jwt.decode(logouts.tokens[0], jwks).claims
    assert (
        claims["sub"] == ann
        and claims["aud"] == store.client_id
        and EVENT in claims["events"]
    )

    # Consent is gone: the store cannot sign Ann in silently any more; the forum still can.
    url, _ = await store.start(prompt="none")
    assert location_params(await browser.go(url))["error"] == "consent_required"
    url, _ = await forum.start(prompt="none")
    assert "code" in location_params(await browser.go(url))

    # Again: nothing changes, the same answer.
    again = await call(
        hub, "POST", f"/api/v1/links/{ann}/cancel", await service_token(store)
    )
    assert again.status_code == 200 and again.json() == body
    assert len(logouts.tokens) == 1

    # Ann sees it on her account page.
    page = await browser.go("/account")
    assert "Cancelled by the service" in page.text
    async with hub.app[DB]() as db:
        store_id = await db.scalar(
            select(Service.id).where(Service.client_id == store.client_id)
        )
        consent = await db.scalar(select(Consent).where(Consent.service_id == store_id))
        assert consent is not None and consent.revoked_at is not None
        live = await db.scalar(
            select(func.count())
            .select_from(Token)
            .where(Token.service_id == store_id, Token.revoked_at.is_(None))
        )
        assert live == 0


async def test_signing_in_again_relinks_with_what_is_granted_now(
    hub: Hub, browser: Browser
) -> None:
    store = await member(hub, "Store")
    await hub.add_user(verified=True)
    await sign_in_through(store, browser, scope="openid profile email phone")
    ann = await sub_of(hub)
    token = await service_token(store)
    assert (
        await call(hub, "POST", f"/api/v1/links/{ann}/cancel", token)
    ).status_code == 200

    # The consent was revoked, so the person is asked again, and the link holds only what they
    # granted this time.
    await sign_in_through(store, browser, scope="openid email")
    body = (await call(hub, "GET", f"/api/v1/links/{ann}", token)).json()
    assert body["status"] == "active"
    assert set(body["scope"].split()) == {"openid", "email"}


async def test_the_person_unlinks_a_service_after_confirming(
    hub: Hub, browser: Browser, logouts: LogoutReceiver
) -> None:
    store = await member(
        hub,
        "Store",
        backchannel_logout_uri=logouts.url,
        webhook_url="http://127.0.0.1:9/hooks",
        kafka_topic=True,
    )
    forum = await member(hub, "Forum")
    await hub.add_user(verified=True)
    store_tokens, _ = await sign_in_through(store, browser)
    await sign_in_through(forum, browser)
    ann = await sub_of(hub)

    page = await browser.go("/account")
    assert page.text.count('href="/account/unlink/') == 2
    confirm = await browser.go(f"/account/unlink/{store.client_id}")
    assert confirm.status_code == 200
    assert "is not cancelled" in confirm.text and "keep or cancel" in confirm.text

    # A form without its CSRF token does nothing.
    forged = await browser.http.post(f"/account/unlink/{store.client_id}", data={})
    assert forged.status_code == 403
    assert (
        await call(hub, "GET", f"/api/v1/links/{ann}", await service_token(store))
    ).json()["status"] == "active"

    done = await browser.http.post(
        form(confirm.text, "/account/unlink/").action,
        data=form(confirm.text, "/account/unlink/").fields,
    )
    assert done.status_code == 303 and done.headers["location"] == "/account?unlinked=1"
    shown = await browser.go(done.headers["location"])
    assert (
        "Unlinked by you" in shown.text
        and shown.text.count('href="/account/unlink/') == 1
    )

    link = (
        await call(hub, "GET", f"/api/v1/links/{ann}", await service_token(store))
    ).json()
    assert link["status"] == "revoked" and link["ended_at"] is not None
    assert (await hub.userinfo(store_tokens["access_token"])).status_code == 401
    assert len(logouts.tokens) == 1

    # The service is told, on each of its channels, with one event id.
    async with hub.app[DB]() as db:
        queued = (await db.scalars(select(Notice).order_by(Notice.channel))).all()
    assert [n.channel for n in queued] == ["topic", "webhook"]
    assert len({n.message_id for n in queued}) == 1
    event = service_notice.validate_json(queued[0].body)
    assert (
        event.type == "link.revoked"
        and event.data.sub == ann
        and event.id == queued[0].message_id
    )

    # Unlinking again, or a service that is not linked, finds nothing to unlink.
    again = await browser.go(f"/account/unlink/{store.client_id}")
    assert again.status_code == 404
    repeat = await browser.http.post(
        f"/account/unlink/{store.client_id}",
        data=form(confirm.text, "/account/unlink/").fields,
    )
    assert repeat.status_code == 404
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(Notice)) == 2


async def test_unlinking_drops_what_was_queued_for_the_service(
    hub: Hub, browser: Browser
) -> None:
    store = await member(hub, "Store", webhook_url="http://127.0.0.1:9/hooks")
    await hub.add_user(verified=True)
    await sign_in_through(store, browser)
    ann = await sub_of(hub)
    async with hub.app[DB].begin() as db:
        link = await db.scalar(select(Link))
        assert link is not None
        db.add(
            Delivery(
                service_id=link.service_id,
                account_id=link.account_id,
                channel="webhook",
                wanted_version=3,
                origin="person",
                next_attempt_at=utcnow(),
            )
        )
    confirm = await browser.go(f"/account/unlink/{store.client_id}")
    f = form(confirm.text, "/account/unlink/")
    assert (await browser.http.post(f.action, data=f.fields)).status_code == 303
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(Delivery)) == 0
    assert (
        await call(hub, "GET", f"/api/v1/links/{ann}", await service_token(store))
    ).json()["status"] == "revoked"


async def test_relinking_withdraws_a_link_revoked_still_waiting(
    hub: Hub, browser: Browser
) -> None:
    """A ``link.revoked`` still waiting to be sent when the person signs in again would reach
    the service after the relink and undo it there: the relink withdraws it."""
    store = await member(
        hub, "Store", webhook_url="http://127.0.0.1:9/hooks", kafka_topic=True
    )
    forum = await member(hub, "Forum", webhook_url="http://127.0.0.1:9/forum")
    await hub.add_user(verified=True)
    await sign_in_through(store, browser)
    await sign_in_through(forum, browser)
    ann = await sub_of(hub)
    for rp in (store, forum):
        confirm = await browser.go(f"/account/unlink/{rp.client_id}")
        f = form(confirm.text, "/account/unlink/")
        assert (await browser.http.post(f.action, data=f.fields)).status_code == 303

    async def pending() -> list[tuple[str, str, str]]:
        async with hub.app[DB]() as db:
            rows = (
                await db.execute(
                    select(Service.name, Notice.event_type, Notice.channel)
                    .join(Service, Service.id == Notice.service_id)
                    .where(Notice.state == "pending")
                )
            ).all()
        return sorted((name, kind, channel) for name, kind, channel in rows)

    assert await pending() == [
        ("Forum", "link.revoked", "webhook"),
        ("Store", "link.revoked", "topic"),
        ("Store", "link.revoked", "webhook"),
    ]
    await sign_in_through(store, browser)  # consents again: the link is active again
    assert (
        await call(hub, "GET", f"/api/v1/links/{ann}", await service_token(store))
    ).json()["status"] == "active"
    # Store's stale notices are gone; Forum, still unlinked, is still told.
    assert await pending() == [("Forum", "link.revoked", "webhook")]


async def test_an_unstorable_sub_is_not_found_like_an_unknown_one(
    hub: Hub, browser: Browser
) -> None:
    """A NUL (which PostgreSQL cannot store) or a lone surrogate in the path is checked before
    the query: 404 like an unknown sub, not a 400 the API document does not list."""
    store = await member(hub, "Store")
    await hub.add_user(verified=True)
    await sign_in_through(store, browser)
    token = await service_token(store)
    unknown = await call(hub, "GET", "/api/v1/links/no-such-person", token)
    assert unknown.status_code == 404
    for sub in ("%00", "ann%00x", "%ED%A0%80"):
        same_answer(await call(hub, "GET", f"/api/v1/links/{sub}", token), unknown)
        same_answer(
            await call(hub, "POST", f"/api/v1/links/{sub}/cancel", token), unknown
        )


async def test_the_cancel_page_shows_each_services_own_route(
    hub: Hub, browser: Browser
) -> None:
    store = await member(
        hub, "Store", cancellation_url="https://store.example/close-account"
    )
    forum = await member(
        hub, "Forum", cancellation_instructions="Write to Forum Ltd, 1 Example Street."
    )
    quiet = await member(hub, "Quiet")
    await hub.add_user(verified=True)
    for rp in (store, forum, quiet):
        await sign_in_through(rp, browser)
    page = await browser.go("/account/cancel")
    assert page.status_code == 200
    assert "We cannot cancel those accounts for you" in page.text
    assert 'href="https://store.example/close-account"' in page.text
    assert "Write to Forum Ltd, 1 Example Street." in page.text
    assert "Contact Quiet directly." in page.text

    anonymous = httpx2.AsyncClient(base_url=hub.url, timeout=30)
    async with anonymous:
        response = await anonymous.get("/account/cancel")
    assert response.status_code == 302 and response.headers["location"].startswith(
        "/sign-in"
    )


@pytest.mark.e2e
def test_services_add_and_update_record_the_cancellation_route(
    database_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESIGNIN_")} | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": "c" * 40,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return onesignin(env, *args)

    added = run(
        "services",
        "add",
        "--name",
        "Store",
        "--redirect-uri",
        "https://store.example/cb",
        "--cancellation-url",
        "https://store.example/close",
    )
    assert added.returncode == 0, added.stderr
    client_id = json.loads(added.stdout)["client_id"]
    updated = run(
        "services",
        "update",
        "--client-id",
        client_id,
        "--cancellation-instructions",
        "Or call 0100 000 000.",
    )
    assert updated.returncode == 0, updated.stderr
    out = json.loads(updated.stdout)
    assert (
        out["cancellation_url"] == "https://store.example/close"
        and out["cancellation_instructions"] == "Or call 0100 000 000."
    )
    cleared = json.loads(
        run(
            "services", "update", "--client-id", client_id, "--cancellation-url", ""
        ).stdout
    )
    assert (
        cleared["cancellation_url"] is None
        and cleared["cancellation_instructions"] == "Or call 0100 000 000."
    )
    bad = run(
        "services",
        "update",
        "--client-id",
        client_id,
        "--cancellation-url",
        "javascript:alert(1)",
    )
    assert (
        bad.returncode == 2 and "--cancellation-url" in bad.stderr and bad.stdout == ""
    )
    assert "--cancellation-url" in run("services", "add", "--help").stdout
