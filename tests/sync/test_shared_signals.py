"""Shared Signals: a receiver written from the specifications (OpenID SSF 1.0, RFC 8935 push,
RFC 8936 poll, RFC 8417 SETs, CAEP and RISC) creates its stream with the service's own client
credentials, asks for a verification event, and hears of every event the hub transmits about
a person linked to it, pushed through the sync worker's notice engine or polled and
acknowledged; the SETs verify against the hub's JWKS fetched over HTTP. A person who is not
linked produces nothing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pyotp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, select, update

from identity.accounts import factors, passkeys, passwords, second_factor
from identity.accounts.erase import erase
from identity.accounts.store import find_by_sub, update_details
from identity.appkeys import CIPHER, DB, PROVIDER
from identity.db.models import Notice, Passkey, Service, SsfStream, utcnow
from identity.operations import accounts as operations
from identity.oidc.logout import end_sessions_of
from identity.ssf import emit, events, streams
from sync import webhooks
from sync.engine import Result
from tests.conftest import free_port
from tests.support import Browser, Hub, eventually
from tests.sync.helpers import engines, link_directly

pytestmark = pytest.mark.e2e

RECEIVER_AUTH = "Bearer receiver-secret-7f3a"
EMITTED = {
    "session-revoked",
    "credential-change",
    "assurance-level-change",
    "account-disabled",
    "account-enabled",
    "identifier-changed",
    "account-purged",
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # No broker and no worker of the hub's own: the test runs the notice engine itself.
    return {"sync_retry_schedule": [0.2, 0.4], "ssf_poll_wait": 1.0}


@dataclass
class Receiver:
    """An RFC 8935 push receiver: checks the Authorization header and the SET's signature,
    type, issuer and audience, answers 202, or 400 with err/description when asked to."""

    issuer: str
    audience: str = ""
    keys: KeySet | None = None
    got: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != RECEIVER_AUTH:
            return web.Response(status=401)
        assert request.content_type == "application/secevent+jwt"
        claims = verify(await request.text(), self.keys, self.issuer, self.audience)
        verification = claims["events"].get(events.VERIFICATION)
        if verification is not None and verification.get("state") == "refuse-me":
            self.refused.append(claims["jti"])
            return web.json_response({"err": "invalid_request", "description": "not this one"}, status=400)
        self.got.append(claims)
        return web.Response(status=202)


def verify(token: str, keys: KeySet | None, issuer: str, audience: str) -> dict[str, Any]:
    assert keys is not None
    decoded = jwt.decode(token, keys, algorithms=["RS256", "ES256"])
    assert decoded.header["typ"] == "secevent+jwt"
    claims = decoded.claims
    assert claims["iss"] == issuer and claims["aud"] == audience
    assert {"jti", "iat", "sub_id", "events"} <= set(claims) and "sub" not in claims and "exp" not in claims
    return claims


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[None]:
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    receiver.url = f"http://127.0.0.1:{port}/events"
    try:
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def notice_engine(hub: Hub) -> AsyncIterator[None]:
    """The sync worker's notice engine (the one that sends every notice), running meanwhile."""
    async with aiohttp.ClientSession() as http:
        _, notices = engines(hub, http)
        task = asyncio.create_task(notices.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def token(http: aiohttp.ClientSession, hub: Hub, client_id: str, secret: str | None) -> str:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret or ""}
    async with http.post(f"{hub.url}/token", data=form) as answer:
        assert answer.status == 200, await answer.text()
        return str((await answer.json())["access_token"])


async def call(http: aiohttp.ClientSession, method: str, url: str, bearer: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, headers={"Authorization": f"Bearer {bearer}"}, **kwargs) as answer:
        text = await answer.text()
        return answer.status, (json.loads(text) if text else None)


def about(claims: dict[str, Any]) -> str:
    [uri] = claims["events"]
    return events.short_name(uri)


async def every_event_for(hub: Hub, people: dict[str, str], browser: Browser) -> None:
    """Each change the hub transmits, to the linked person and to the unlinked one alike."""
    keys = hub.app[PROVIDER].keys
    for sub, email in people.items():
        await browser.sign_in(email)
        async with hub.app[DB].begin() as db:
            account = await find_by_sub(db, sub)
            assert account is not None
            await end_sessions_of(db, keys, hub.settings.issuer, account.id)  # session-revoked
            await passwords.replace(db, account.id, "$argon2id$v=19$m=8192,t=1,p=1$bmV3$bmV3")  # credential-change
        async with hub.app[DB].begin() as db:
            enrolment = await second_factor.start_enrolment(db, hub.app[CIPHER], account.id, email)
            assert enrolment is not None
        async with hub.app[DB].begin() as db:  # credential-change (app, create), assurance up
            assert await second_factor.confirm_enrolment(db, hub.app[CIPHER], account.id, pyotp.TOTP(enrolment.secret).now())
        async with hub.app[DB].begin() as db:  # account-disabled (and session-revoked), account-enabled
            await operations.set_disabled(db, keys, hub.settings.issuer, sub, True, actor="ops")
        async with hub.app[DB].begin() as db:
            await operations.set_disabled(db, keys, hub.settings.issuer, sub, False, actor="ops")
        async with hub.app[DB].begin() as db:  # identifier-changed
            account = await find_by_sub(db, sub)
            assert account is not None
            await update_details(db, account, {"email": f"new.{email}"}, channel="person", actor=sub, email_confirmed=True)
        async with hub.app[DB].begin() as db:  # account-purged (a child's account past its grace)
            account = await find_by_sub(db, sub)
            assert account is not None
            await erase(db, account, keys=None, issuer=hub.settings.issuer, actor_kind="hub", actor="purge", despite_links=True)


async def test_a_receiver_gets_each_event_about_linked_people_pushed_and_polled(hub: Hub) -> None:
    linked = await hub.add_user(email="linked@example.com", verified=True)
    unlinked = await hub.add_user(email="unlinked@example.com", verified=True)
    store = await hub.add_service(name="Store")
    forum = await hub.add_service(name="Forum")
    await link_directly(hub, [linked], store.client_id, scope="openid profile email")
    await link_directly(hub, [linked], forum.client_id, scope="openid profile")  # may not see email

    pushed = Receiver(issuer=hub.settings.issuer, audience=store.client_id)
    async with aiohttp.ClientSession() as http, serving(pushed):
        # The receiver learns the transmitter's metadata and keys over HTTP.
        async with http.get(f"{hub.url}/.well-known/ssf-configuration") as answer:
            metadata = await answer.json()
        assert metadata["issuer"] == hub.settings.issuer
        assert set(metadata["delivery_methods_supported"]) == {"urn:ietf:rfc:8935", "urn:ietf:rfc:8936"}
        async with http.get(metadata["jwks_uri"]) as answer:
            pushed.keys = KeySet.import_key_set(await answer.json())
        # The documents describe the endpoints and the SETs.
        async with http.get(f"{hub.url}/api/openapi.json") as answer:
            paths = set((await answer.json())["paths"])
        assert {"/api/v1/ssf/stream", "/api/v1/ssf/status", "/api/v1/ssf/verify", "/api/v1/ssf/poll/{id}"} <= paths
        async with http.get(f"{hub.url}/asyncapi.json") as answer:
            asyncapi = await answer.json()
        assert {"sharedSignalsPush", "sharedSignalsPoll"} <= set(asyncapi["channels"])
        assert asyncapi["components"]["messages"]["securityEventToken"]["contentType"] == "application/secevent+jwt"
        store_token = await token(http, hub, store.client_id, store.client_secret)
        forum_token = await token(http, hub, forum.client_id, forum.client_secret)

        # Store: a push stream asking for everything, and one type the hub does not send.
        status, stream = await call(
            http, "POST", metadata["configuration_endpoint"], store_token,
            json={
                "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": pushed.url, "authorization_header": RECEIVER_AUTH},
                "events_requested": [*events.SUPPORTED, "https://example.com/not-an-event"],
            },
        )
        assert status == 201, stream
        assert stream["events_delivered"] == list(events.SUPPORTED) and stream["aud"] == store.client_id
        assert "authorization_header" not in stream["delivery"]
        assert (await call(http, "POST", metadata["configuration_endpoint"], store_token, json={}))[0] == 409
        # A body that is not as documented is refused whole (400, naming the field) and makes nothing.
        status, refused = await call(
            http, "POST", metadata["configuration_endpoint"], forum_token,
            json={"stream_id": [1], "delivery": {"method": "urn:ietf:rfc:8936"}},
        )
        assert status == 400 and "stream_id" in refused["error_description"], refused
        status, refused = await call(http, "POST", metadata["status_endpoint"], store_token, json={"stream_id": stream["stream_id"], "status": "enabled", "reason": 7})
        assert status == 400 and "reason" in refused["error_description"], refused
        # Forum: a poll stream. Neither service sees the other's stream.
        status, polled = await call(
            http, "POST", metadata["configuration_endpoint"], forum_token,
            json={"delivery": {"method": "urn:ietf:rfc:8936"}, "events_requested": list(events.SUPPORTED)},
        )
        assert status == 201, polled
        assert polled["delivery"]["endpoint_url"] == f"{hub.url}/api/v1/ssf/poll/{polled['stream_id']}"
        assert (await call(http, "GET", metadata["configuration_endpoint"], forum_token, params={"stream_id": stream["stream_id"]}))[0] == 404
        assert (await call(http, "GET", metadata["configuration_endpoint"], store_token))[1] == [stream]
        status, state = await call(http, "GET", metadata["status_endpoint"], store_token, params={"stream_id": stream["stream_id"]})
        assert (status, state["status"]) == (200, "enabled")

        # The verification event, pushed; one the receiver refuses (400, err) is not retried.
        verify_url = metadata["verification_endpoint"]
        assert (await call(http, "POST", verify_url, store_token, json={"stream_id": stream["stream_id"], "state": "s-1"}))[0] == 204
        assert (await call(http, "POST", verify_url, store_token, json={"stream_id": stream["stream_id"], "state": "again"}))[0] == 429
        async with notice_engine(hub):
            await every_signal(hub, http, pushed, metadata, stream, polled, store, forum, store_token, forum_token, linked, unlinked)


async def every_signal(
    hub: Hub, http: aiohttp.ClientSession, pushed: Receiver, metadata: dict[str, Any], stream: dict[str, Any], polled: dict[str, Any],
    store: Any, forum: Any, store_token: str, forum_token: str, linked: str, unlinked: str,
) -> None:
    """With the sync worker's notice engine running (started once the streams exist, as a
    worker reads services every few seconds)."""
    verify_url = metadata["verification_endpoint"]
    await eventually(lambda: _has(pushed.got, "verification"), what="the verification event")
    [checked] = pushed.got
    assert checked["sub_id"] == {"format": "opaque", "id": stream["stream_id"]}
    assert checked["events"] == {events.VERIFICATION: {"state": "s-1"}}

    browser = Browser(hub)
    try:
        await every_event_for(hub, {linked: "linked@example.com", unlinked: "unlinked@example.com"}, browser)
    finally:
        await browser.aclose()

    # Pushed: each type, about the linked person, verified.
    await eventually(lambda: _has(pushed.got, *EMITTED), timeout=30, what="every event pushed")
    await _settled(hub, store.client_id)
    by_type = {about(c): c for c in pushed.got}
    person = {"format": "iss_sub", "iss": hub.settings.issuer, "sub": linked}
    assert all(c["sub_id"] == person for c in pushed.got if about(c) not in ("verification", "identifier-changed"))
    assert by_type["identifier-changed"]["sub_id"] == {"format": "email", "email": "linked@example.com"}
    assert by_type["identifier-changed"]["events"][events.IDENTIFIER_CHANGED] == {"new-value": "new.linked@example.com"}
    changes = [c["events"][events.CREDENTIAL_CHANGE] for c in pushed.got if about(c) == "credential-change"]
    assert [(c["credential_type"], c["change_type"]) for c in changes] == [("password", "update"), ("app", "create")]
    revoked = [c["events"][events.SESSION_REVOKED]["initiating_entity"] for c in pushed.got if about(c) == "session-revoked"]
    assert revoked == ["user"]  # signed out everywhere (disabling the account found no session left)
    levels = [c["events"][events.ASSURANCE_LEVEL_CHANGE] for c in pushed.got if about(c) == "assurance-level-change"]
    assert levels[0]["change_direction"] == "increase" and levels[0]["current_level"] == events.TWO_FACTORS
    # The unlinked person produced nothing: no SET was even written about them.
    assert not [c for c in pushed.got if unlinked in json.dumps(c)]
    assert await _written_about(hub, unlinked) == 0

    # Polled, with acknowledgements: the same events, but no identifier-changed (Forum may
    # not see the address); a SET not acknowledged comes again, an acknowledged one never.
    poll_url = polled["delivery"]["endpoint_url"]
    seen: dict[str, dict[str, Any]] = {}
    status, first = await call(http, "POST", poll_url, forum_token, json={"maxEvents": 2, "returnImmediately": True})
    assert status == 200 and len(first["sets"]) == 2 and first["moreAvailable"] is True
    status, again = await call(http, "POST", poll_url, forum_token, json={"maxEvents": 2, "returnImmediately": True})
    assert again["sets"].keys() == first["sets"].keys()
    acks: list[str] = []
    while True:
        status, answer = await call(http, "POST", poll_url, forum_token, json={"ack": acks, "maxEvents": 5, "returnImmediately": True})
        assert status == 200, answer
        for jti, set_ in answer["sets"].items():
            claims = verify(set_, pushed.keys, hub.settings.issuer, forum.client_id)
            assert claims["jti"] == jti
            seen[jti] = claims
        acks = list(answer["sets"])
        if not acks:
            break
    assert answer == {"sets": {}, "moreAvailable": False}
    assert {about(c) for c in seen.values()} == EMITTED - {"identifier-changed"}
    assert not [c for c in seen.values() if unlinked in json.dumps(c)]
    # A long poll with nothing waiting answers empty once its wait is over.
    assert (await call(http, "POST", poll_url, forum_token, json={}))[1] == {"sets": {}, "moreAvailable": False}

    # A SET the receiver refuses with 400 and an err is a dead letter at once.
    async with hub.app[DB].begin() as db:  # (the interval between requests is checked above)
        await db.execute(update(SsfStream).values(last_verification_at=None))
    assert (await call(http, "POST", verify_url, store_token, json={"stream_id": stream["stream_id"], "state": "refuse-me"}))[0] == 204
    await eventually(lambda: _dead(hub, store.client_id), what="the refused SET given up")
    assert len(pushed.refused) == 1

    # Deleting the stream: gone for the service.
    assert (await call(http, "DELETE", metadata["configuration_endpoint"], store_token, params={"stream_id": stream["stream_id"]}))[0] == 204
    assert (await call(http, "GET", metadata["configuration_endpoint"], store_token))[1] == []


async def _has(got: list[dict[str, Any]], *names: str) -> bool:
    return set(names) <= {about(c) for c in got}


async def _settled(hub: Hub, client_id: str) -> None:
    """Nothing of the service's is still waiting to be pushed: every SET written was written in
    the transaction of its change, so what it received by now is all it will receive."""

    async def nothing_pending() -> bool:
        async with hub.app[DB]() as db:
            service_id = await db.scalar(select(Service.id).where(Service.client_id == client_id))
            return not await db.scalar(select(func.count()).select_from(Notice).where(Notice.service_id == service_id, Notice.state == "pending"))

    await eventually(nothing_pending, what=f"{client_id} settled")


async def _written_about(hub: Hub, sub: str) -> int:
    async with hub.app[DB]() as db:
        return int(await db.scalar(select(func.count()).select_from(Notice).where(Notice.key == sub)) or 0)


async def _dead(hub: Hub, client_id: str) -> bool:
    async with hub.app[DB]() as db:
        rows = (
            await db.execute(
                select(Notice.state, Notice.last_error).join(Service, Service.id == Notice.service_id).where(
                    Service.client_id == client_id, Notice.event_type == "verification", Notice.state == "dead"
                )
            )
        ).all()
    return bool(rows) and "invalid_request: not this one" in (rows[0][1] or "")


async def test_a_push_stream_failing_long_enough_is_quarantined_and_shown_in_sync_status(hub: Hub) -> None:
    """The same failing and quarantine policy as a webhook, on the stream's own endpoint: the
    outcomes are recorded as the notice engine records them (no receiver needed)."""
    store = await hub.add_service(name="Store")
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == store.client_id))
        assert service is not None
        stream = await streams.create(db, hub.app[CIPHER], service.id, {"delivery": {"method": streams.PUSH, "endpoint_url": "http://127.0.0.1:9/ssf"}})
        await emit.verification(db, stream, store.client_id, events.verification("s"))
    async with aiohttp.ClientSession() as http:
        _, engine = engines(hub, http)
        await engine.endpoints.refresh()
        [job] = await engine.claim(10)
        assert job.channel == "ssf"
        start = utcnow()
        later = start + dt.timedelta(seconds=hub.settings.sync_quarantine_after)
        for at in (start, later):
            async with hub.app[DB].begin() as db:
                await engine.record(db, [Result(job, webhooks.Outcome("retry", "HTTP 503", status=503), at)])
            job = dataclasses.replace(job, attempts=job.attempts + 1, failing_since=start)
        service_token = await token(http, hub, store.client_id, store.client_secret)
        status, body = await call(http, "GET", f"{hub.url}/api/v1/sync/status", service_token)
        assert status == 200, body
        signals = body["shared_signals"]
        assert (signals["stream_id"], signals["state"], signals["pending"], signals["last_error"]) == (stream.stream_id, "quarantined", 1, "HTTP 503")
        async with hub.app[DB]() as db:
            due = await db.scalar(select(Notice.next_attempt_at).where(Notice.id == job.id))
        assert due is not None and due.replace(tzinfo=dt.UTC) >= later.replace(tzinfo=dt.UTC)  # held until the next probe

        # A SET the endpoint accepts brings it back.
        async with hub.app[DB].begin() as db:
            await engine.record(db, [Result(job, webhooks.Outcome("ok", status=202), utcnow())])
        status, body = await call(http, "GET", f"{hub.url}/api/v1/sync/status", service_token)
        assert (body["shared_signals"]["state"], body["shared_signals"]["pending"]) == ("healthy", 0)


async def test_removing_passkeys_and_the_app_tells_a_stream_what_changed_and_when_assurance_fell(hub: Hub) -> None:
    """Passkeys (a security key and a synced one) and the authenticator app removed, by the
    person and then by support: a credential-change each, and an assurance-level-change only
    when the last second factor went."""
    sub = await hub.add_user(email="keys@example.com", verified=True)
    forum = await hub.add_service(name="Forum")
    await link_directly(hub, [sub], forum.client_id)
    async with hub.app[DB].begin() as db:
        service = await db.scalar(select(Service).where(Service.client_id == forum.client_id))
        account = await find_by_sub(db, sub)
        assert service is not None and account is not None
        await streams.create(db, hub.app[CIPHER], service.id, {"events_requested": list(events.SUPPORTED)})
        for n, synced in enumerate((False, True)):
            db.add(Passkey(account_id=account.id, credential_id=f"cred-{n}", user_handle="h", public_key="k", transports=["usb"], backup_eligible=synced, name=f"key {n}"))
        await db.flush()
        [roaming, synced_key] = await passkeys.listed(db, account.id)
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await passkeys.remove(db, account, roaming.id)  # the person removes the security key
    async with hub.app[DB].begin() as db:
        await factors.remove_all(db, account.id)  # support removes the rest
    async with hub.app[DB]() as db:
        rows = (await db.execute(select(Notice.event_type, Notice.body).where(Notice.service_id == service.id).order_by(Notice.id))).all()
    said = [(t, json.loads(b)["events"]) for t, b in rows]
    assert [(t, e.get(events.CREDENTIAL_CHANGE, {}).get("credential_type"), e.get(events.CREDENTIAL_CHANGE, {}).get("initiating_entity")) for t, e in said] == [
        ("credential-change", "fido2-roaming", "user"),
        ("credential-change", "fido2-platform", "admin"),
        ("assurance-level-change", None, None),
    ]
    assert said[2][1][events.ASSURANCE_LEVEL_CHANGE]["change_direction"] == "decrease"
    assert {json.loads(b)["sub_id"]["sub"] for _, b in rows} == {sub}
