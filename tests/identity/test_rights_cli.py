"""``onesignin rights``: the hub's operators list rights requests (open, overdue, all; by target)
and answer the hub's own, never a service's; one JSON object on stdout, errors on stderr."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from identity import rights
from identity.accounts.store import find_by_sub
from identity.appkeys import DB
from identity.db.models import Link, Service, utcnow
from tests.cli import onesignin as run_command
from tests.support import Hub

pytestmark = pytest.mark.e2e


async def onesignin(
    env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_command, env, *args)


async def ok(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = await onesignin(env, *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def env(hub: Hub, tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path / "cli"),
        "ONESIGNIN_DATABASE_URL": hub.settings.resolved_database_url,
        "ONESIGNIN_SECRET_KEY": hub.settings.secret_key or "",
    }


@pytest.fixture
async def opened(hub: Hub) -> dict[str, Any]:
    """Ann, linked to Forum, with an overdue and a fresh request to the hub and an overdue one
    to Forum."""
    sub = await hub.add_user(verified=True)
    forum = await hub.add_service(name="Forum")
    long_ago = utcnow() - dt.timedelta(days=45)
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        service = await db.scalar(
            select(Service).where(Service.client_id == forum.client_id)
        )
        assert service is not None
        db.add(Link(account_id=account.id, service_id=service.id, scope="openid"))
        await db.flush()
        late = await rights.open_request(
            db,
            account,
            type="erasure",
            client_id=None,
            details="Delete me",
            now=long_ago,
        )
        fresh = await rights.open_request(
            db, account, type="access", client_id=None, details=None
        )
        forums = await rights.open_request(
            db,
            account,
            type="access",
            client_id=forum.client_id,
            details=None,
            now=long_ago,
        )
        return {
            "sub": sub,
            "forum": forum.client_id,
            "late": late.public_id,
            "fresh": fresh.public_id,
            "forums": forums.public_id,
        }


async def test_listing_open_overdue_and_by_target(
    env: dict[str, str], opened: dict[str, Any]
) -> None:
    listed = await ok(env, "rights", "list")
    assert listed["state"] == "open" and listed["count"] == 3
    ids = [r["id"] for r in listed["requests"]]
    assert ids[-1] == opened["fresh"]  # earliest due first
    late = next(r for r in listed["requests"] if r["id"] == opened["late"])
    assert (
        late["sub"] == opened["sub"]
        and late["target"] is None
        and late["target_name"] == "hub"
    )
    assert (
        late["overdue"] is True
        and late["details"] == "Delete me"
        and late["status"] == "received"
    )
    assert [h["status"] for h in late["history"]] == ["received"]

    overdue = await ok(env, "rights", "list", "--overdue")
    assert {r["id"] for r in overdue["requests"]} == {opened["late"], opened["forums"]}
    assert all(r["overdue"] for r in overdue["requests"])
    hub_only = await ok(env, "rights", "list", "--hub")
    assert {r["id"] for r in hub_only["requests"]} == {opened["late"], opened["fresh"]}
    forum_only = await ok(
        env, "rights", "list", "--overdue", "--service", opened["forum"]
    )
    assert [(r["id"], r["target"]) for r in forum_only["requests"]] == [
        (opened["forums"], opened["forum"])
    ]

    unknown = await onesignin(env, "rights", "list", "--service", "nosuchservice")
    assert (
        unknown.returncode == 2
        and unknown.stdout == ""
        and "no service with client_id" in unknown.stderr
    )
    both = await onesignin(env, "rights", "list", "--overdue", "--all")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    helped = await onesignin(env, "rights", "list", "--help")
    assert helped.returncode == 0 and "--overdue" in helped.stdout


async def test_operators_answer_the_hubs_own_requests_only(
    env: dict[str, str], opened: dict[str, Any]
) -> None:
    no_reason = await onesignin(
        env, "rights", "status", "--id", opened["late"], "--status", "extended"
    )
    assert (
        no_reason.returncode == 2
        and no_reason.stdout == ""
        and "reason" in no_reason.stderr
    )

    # Overdue already: too late to extend (the extension is decided within the first month).
    too_late = await onesignin(
        env,
        "rights",
        "status",
        "--id",
        opened["late"],
        "--status",
        "extended",
        "--reason",
        "Backups to search",
    )
    assert too_late.returncode == 2 and "past its due date" in too_late.stderr

    extended = await ok(
        env,
        "rights",
        "status",
        "--id",
        opened["fresh"],
        "--status",
        "extended",
        "--reason",
        "Backups to search",
        "--by",
        "dpo@hub",
    )
    request = extended["request"]
    received = dt.datetime.fromisoformat(request["received_at"])
    assert request["status"] == "extended" and dt.datetime.fromisoformat(
        request["due_at"]
    ) == rights.extended_due_at(received)
    assert request["overdue"] is False
    assert request["history"][-1] | {"at": None} == {
        "status": "extended",
        "by": "hub",
        "actor": "dpo@hub",
        "reason": "Backups to search",
        "at": None,
    }
    twice = await onesignin(
        env,
        "rights",
        "status",
        "--id",
        opened["fresh"],
        "--status",
        "extended",
        "--reason",
        "more",
    )
    assert twice.returncode == 2 and "only once" in twice.stderr

    completed = await ok(
        env, "rights", "status", "--id", opened["late"], "--status", "completed"
    )
    assert (
        completed["request"]["status"] == "completed"
        and completed["request"]["closed_at"]
    )
    assert opened["late"] not in {
        r["id"] for r in (await ok(env, "rights", "list"))["requests"]
    }
    assert opened["late"] in {
        r["id"] for r in (await ok(env, "rights", "list", "--all"))["requests"]
    }

    # A service's request is that service's to answer.
    theirs = await onesignin(
        env, "rights", "status", "--id", opened["forums"], "--status", "acknowledged"
    )
    assert (
        theirs.returncode == 2
        and f"addressed to service {opened['forum']}" in theirs.stderr
    )
    missing = await onesignin(
        env,
        "rights",
        "status",
        "--id",
        "2f1e0000-0000-4000-8000-000000000000",
        "--status",
        "completed",
    )
    assert missing.returncode == 2 and "no rights request" in missing.stderr
    bad = await onesignin(
        env, "rights", "status", "--id", opened["fresh"], "--status", "received"
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    listed = await ok(env, "rights", "list", "--service", opened["forum"])
    assert listed["requests"][0]["status"] == "received"
