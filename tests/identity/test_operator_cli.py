"""The operators' commands, run as real processes against a running hub's database: services
list, show, disable, enable, rotate-secret, remove; users list, show, disable, enable, unlock,
end-sessions. Readable by default, one JSON object with --json, exit 2 with one line on a
refusal, and an audit record for every change."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import httpx2
import pytest

from identity.accounts.store import find_by_sub
from identity.appkeys import DB
from identity.accounts import export
from identity.rights.store import for_account, move, open_request
from tests.cli import onesignin
from tests.conftest import HUB_SECRET_KEY
from tests.identity.oauth.test_logout import Receiver, receiver  # noqa: F401
from tests.support import Browser, Hub, RelyingParty, eventually, location_params, sign_in_through

pytestmark = pytest.mark.e2e


def cli_env(hub: Hub) -> dict[str, str]:
    return os.environ | {
        "ONESIGNIN_DATA_DIR": str(hub.settings.data_dir),
        "ONESIGNIN_DATABASE_URL": hub.settings.database_url,
        "ONESIGNIN_SECRET_KEY": HUB_SECRET_KEY,
        "ONESIGNIN_ISSUER": hub.url,
        "ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    }


async def run(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    """``onesignin ARGS`` in a process of its own, off the event loop that serves the hub (and
    the services' back-channel logout endpoints)."""
    return await asyncio.to_thread(onesignin, cli_env(hub), *args)


async def run_json(hub: Hub, *args: str) -> Any:
    done = await run(hub, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def audit_actions(hub: Hub, sub: str) -> list[str]:
    done = await run(hub, "audit", "list", "--account", sub)
    assert done.returncode == 0, done.stderr
    return [r["action"] for r in json.loads(done.stdout)]


@pytest.fixture
async def rp(hub: Hub, receiver: Receiver) -> RelyingParty:  # noqa: F811
    service = await hub.add_service(name="Garden Centre", backchannel_logout_uri=receiver.url)
    found = RelyingParty(hub, service.client_id, service.client_secret)
    await found.discover()
    return found


async def client_credentials(rp: RelyingParty, secret: str | None = None) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=rp.hub.url, timeout=30) as http:
        return await http.post(
            "/token", data={"grant_type": "client_credentials", "scope": "openid"},
            auth=httpx2.BasicAuth(rp.client_id, secret or rp.client_secret or ""),
        )


async def test_services_list_show_and_a_duplicate_name(hub: Hub, rp: RelyingParty) -> None:
    again = await run(hub, "services", "add", "--name", "garden centre", "--redirect-uri", "https://garden.example/cb")
    assert again.returncode == 2 and again.stdout == ""
    assert f"a service named 'garden centre' is already registered ({rp.client_id})" in again.stderr
    assert "Traceback" not in again.stderr

    listed = await run(hub, "services", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["CLIENT_ID", "NAME", "STATUS", "TOKEN_ENDPOINT_AUTH_METHOD", "LINKED_PEOPLE"]
    assert [r["name"] for r in (await run_json(hub, "services", "list"))["services"]] == ["Garden Centre"]

    shown = await run_json(hub, "services", "show", "--client-id", rp.client_id)
    assert shown["name"] == "Garden Centre" and shown["status"] == "active"
    assert not any("secret" in key and key != "previous_secret_expires_at" for key in shown)
    assert f"name: Garden Centre" in (await run(hub, "services", "show", "--client-id", rp.client_id)).stdout

    unknown = await run(hub, "services", "show", "--client-id", "nope")
    assert unknown.returncode == 2 and "no service with client_id 'nope'" in unknown.stderr


async def test_a_rotated_secret_overlaps_with_the_new_one(hub: Hub, rp: RelyingParty) -> None:
    old = rp.client_secret
    rotated = await run_json(hub, "services", "rotate-secret", "--client-id", rp.client_id, "--overlap", "3600")
    assert rotated["client_secret"] != old and rotated["previous_secret_expires_at"]
    assert (await client_credentials(rp, rotated["client_secret"])).status_code == 200
    assert (await client_credentials(rp, old)).status_code == 200

    newest = await run_json(hub, "services", "rotate-secret", "--client-id", rp.client_id, "--overlap", "0")
    assert newest["previous_secret_expires_at"] is None

    async def only_the_newest_works() -> bool:
        return (await client_credentials(rp, rotated["client_secret"])).status_code == 401
    await eventually(only_the_newest_works, what="the replaced secret refused")
    assert (await client_credentials(rp, old)).status_code == 401
    assert (await client_credentials(rp, newest["client_secret"])).status_code == 200
    readable = await run(hub, "services", "rotate-secret", "--client-id", rp.client_id)
    assert "the previous secret keeps working until" in readable.stdout


async def test_a_disabled_service_gets_no_sign_ins_no_tokens(hub: Hub, rp: RelyingParty, receiver: Receiver) -> None:  # noqa: F811
    await hub.add_user(verified=True)
    browser = Browser(hub)
    try:
        token, _ = await sign_in_through(rp, browser, scope="openid offline_access")
        done = await run(hub, "services", "disable", "--client-id", rp.client_id, "--reason", "T-42")
        assert done.returncode == 0, done.stderr
        assert "status: disabled" in done.stdout

        async def refused() -> bool:
            return (await client_credentials(rp)).status_code == 401
        await eventually(refused, what="the disabled service refused")
        answer = await client_credentials(rp)
        assert answer.json() == {"error": "invalid_client", "error_description": "This service is disabled at the hub."}
        assert (await hub.userinfo(token["access_token"])).status_code == 401
        refresh = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
        assert refresh.status_code == 401 and refresh.json()["error"] == "invalid_client"
        url, _ = await rp.start()
        sent_back = await browser.go(url)
        assert sent_back.status_code == 302
        assert location_params(sent_back)["error"] == "unauthorized_client"
        # Nothing about anyone goes to a disabled service, a logout token neither (one is POSTed
        # before the sign-out answers, so the answer is the barrier).
        signed_out = await browser.submit(await browser.go("/account"), "/sign-out")
        assert "You are signed out" in signed_out.text
        assert receiver.posts == []

        assert (await run(hub, "services", "enable", "--client-id", rp.client_id)).returncode == 0

        async def accepted() -> bool:
            return (await client_credentials(rp)).status_code == 200
        await eventually(accepted, what="the enabled service accepted")
        assert (await hub.userinfo(token["access_token"])).status_code == 200
        about = json.loads((await run(hub, "audit", "list", "--service", rp.client_id)).stdout)
        assert [(r["action"], r["reason"], r["actor_kind"]) for r in about] == [("service.disabled", "T-42", "cli"), ("service.enabled", None, "cli")]
    finally:
        await browser.aclose()


async def test_removing_a_service_with_linked_people_needs_force(hub: Hub, rp: RelyingParty, receiver: Receiver) -> None:  # noqa: F811
    sub = await hub.add_user(verified=True)
    browser = Browser(hub)
    try:
        token, _ = await sign_in_through(rp, browser, scope="openid offline_access")
        refused = await run(hub, "services", "remove", "--client-id", rp.client_id)
        assert refused.returncode == 2 and "1 person(s) are linked to Garden Centre" in refused.stderr and "--force" in refused.stderr
        assert (await client_credentials(rp)).status_code == 200

        removed = await run_json(hub, "services", "remove", "--client-id", rp.client_id, "--force")
        assert removed == {
            "removed": rp.client_id, "name": "Garden Centre", "links_ended": 1,
            "deliveries_dropped": 0, "notices_dropped": 0, "rights_requests_kept": 0, "logouts_sent": 1, "logouts_unanswered": [],
        }
        assert len(receiver.posts) == 1
        assert (await run_json(hub, "services", "list"))["services"] == []
        assert (await hub.userinfo(token["access_token"])).status_code == 401
        assert "link.ended_by_service_removal" in await audit_actions(hub, sub)
        about = await run(hub, "audit", "list", "--service", rp.client_id)
        assert [(r["action"], r["detail"]["links_ended"]) for r in json.loads(about.stdout)] == [("service.removed", 1)]
    finally:
        await browser.aclose()


async def test_a_service_with_an_open_rights_request_is_not_removed(hub: Hub, rp: RelyingParty) -> None:
    sub = await hub.add_user(verified=True)
    browser = Browser(hub)
    try:
        await sign_in_through(rp, browser, scope="openid")
    finally:
        await browser.aclose()
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        await open_request(db, account, type="erasure", client_id=rp.client_id, details=None)
    refused = await run(hub, "services", "remove", "--client-id", rp.client_id, "--force")
    assert refused.returncode == 2
    assert "1 rights request(s) to Garden Centre" in refused.stderr and f"rights list --service {rp.client_id}" in refused.stderr
    assert [s["client_id"] for s in (await run_json(hub, "services", "list"))["services"]] == [rp.client_id]


async def test_a_removed_services_answered_rights_requests_are_kept_naming_it(hub: Hub, rp: RelyingParty) -> None:
    """How a service answered a person's request is part of the person's record: it outlives the
    service as long as any closed request is kept, and never reads as a request to the hub."""
    sub = await hub.add_user(verified=True)
    browser = Browser(hub)
    await sign_in_through(rp, browser, scope="openid")
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        answered = await open_request(db, account, type="access", client_id=rp.client_id, details="what do you hold?")
        to_hub = await open_request(db, account, type="objection", client_id=None, details=None)
        await move(db, answered, status="completed", reason="sent by post", actor_kind="service", actor=rp.client_id)
        answered_id, hub_id, account_id = answered.public_id, to_hub.public_id, account.id

    removed = await run_json(hub, "services", "remove", "--client-id", rp.client_id, "--force")
    assert removed["rights_requests_kept"] == 1 and removed["links_ended"] == 1

    kept = json.loads((await run(hub, "rights", "list", "--all", "--service", rp.client_id)).stdout)["requests"]
    assert [(r["id"], r["target"], r["target_name"], r["status"]) for r in kept] == [(answered_id, rp.client_id, "Garden Centre", "completed")]
    assert [h["status"] for h in kept[0]["history"]] == ["received", "completed"]
    assert [r["id"] for r in json.loads((await run(hub, "rights", "list", "--all", "--hub")).stdout)["requests"]] == [hub_id]
    refused = await run(hub, "rights", "status", "--id", answered_id, "--status", "completed", "--reason", "not ours")
    assert refused.returncode == 2 and f"service {rp.client_id}, since removed" in refused.stderr  # never the hub's to answer

    try:  # the person's own page still shows whom they asked and the answer
        page = await browser.go(hub.url + "/account/rights")
        assert page.status_code == 200
        assert "Garden Centre" in page.text and "sent by post" in page.text
    finally:
        await browser.aclose()

    async with hub.app[DB].begin() as db:
        mine = {v.request.public_id: (v.client_id, v.service_name) for v in await for_account(db, account_id)}
        account = await find_by_sub(db, sub)
        assert account is not None
        exported = (await export.build(db, account)).rights_requests
    assert mine == {answered_id: (rp.client_id, "Garden Centre"), hub_id: (None, None)}
    assert {r.id: r.service.name if r.service else None for r in exported} == {answered_id: "Garden Centre", hub_id: None}


async def test_users_list_show_disable_enable(hub: Hub, rp: RelyingParty, receiver: Receiver) -> None:  # noqa: F811
    sub = await hub.add_user(verified=True)
    await hub.add_user(email="bob@example.com", verified=True)
    assert [u["email"] for u in (await run_json(hub, "users", "list"))["users"]] == ["ann@example.com", "bob@example.com"]
    assert [u["sub"] for u in (await run_json(hub, "users", "list", "--email", "ann"))["users"]] == [sub]
    browser = Browser(hub)
    try:
        token, _ = await sign_in_through(rp, browser, scope="openid offline_access")
        shown = await run_json(hub, "users", "show", "--sub", sub)
        assert shown["live_sessions"] == 1 and shown["links"] == [{"client_id": rp.client_id, "name": "Garden Centre", "status": "active"}]

        disabled = await run_json(hub, "users", "disable", "--sub", sub, "--reason", "T-7")
        assert disabled["status"] == "disabled" and disabled["logouts_sent"] == 1 and disabled["logouts_unanswered"] == []
        assert (await browser.go("/account")).url.path == "/sign-in"
        assert (await hub.userinfo(token["access_token"])).status_code == 401
        again = Browser(hub)
        try:
            assert (await again.sign_in()).url.path == "/sign-in"
            assert (await run(hub, "users", "enable", "--sub", sub)).returncode == 0
            assert (await again.sign_in()).url.path == "/account"
        finally:
            await again.aclose()
        assert await audit_actions(hub, sub) == ["account.disabled", "account.enabled"]
    finally:
        await browser.aclose()


async def test_users_end_sessions_signs_out_everywhere(hub: Hub, rp: RelyingParty, receiver: Receiver) -> None:  # noqa: F811
    sub = await hub.add_user(verified=True)
    laptop, phone = Browser(hub), Browser(hub)
    try:
        on_laptop, _ = await sign_in_through(rp, laptop, scope="openid offline_access")
        on_phone, _ = await sign_in_through(rp, phone, scope="openid offline_access")
        done = await run(hub, "users", "end-sessions", "--sub", sub)
        assert done.returncode == 0, done.stderr
        assert "sessions ended: 2" in done.stdout and "logouts sent: 2" in done.stdout and "logouts unanswered: -" in done.stdout
        assert len(receiver.posts) == 2
        for browser in (laptop, phone):
            assert (await browser.go("/account")).url.path == "/sign-in"
        for token in (on_laptop, on_phone):
            answer = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
            assert answer.status_code == 400
        assert await audit_actions(hub, sub) == ["account.sessions_ended"]
    finally:
        await laptop.aclose()
        await phone.aclose()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"throttle_account_failures": 2, "throttle_base_lockout": 600, "throttle_max_lockout": 600}


async def test_users_unlock_lifts_a_lockout(hub: Hub) -> None:
    sub = await hub.add_user(verified=True)
    browser = Browser(hub)
    try:
        for _ in range(3):
            await browser.sign_in(password="wrong password, certainly")
        assert (await browser.sign_in()).status_code == 429
        assert (await run_json(hub, "users", "show", "--sub", sub))["locked_until"]
        assert (await run_json(hub, "users", "unlock", "--sub", sub)) == {"sub": sub, "was_locked": True}
        assert (await browser.sign_in()).url.path == "/account"
        assert await audit_actions(hub, sub) == ["account.unlocked"]
    finally:
        await browser.aclose()


@pytest.mark.parametrize(
    "command",
    [
        ["services", "list"], ["services", "show"], ["services", "disable"], ["services", "enable"],
        ["services", "rotate-secret"], ["services", "remove"], ["users", "list"], ["users", "show"],
        ["users", "disable"], ["users", "enable"], ["users", "unlock"], ["users", "end-sessions"],
    ],
)
def test_every_operator_command_has_help(command: list[str]) -> None:
    done = onesignin(dict(os.environ), *command, "--help")
    assert done.returncode == 0 and "--json" in done.stdout
