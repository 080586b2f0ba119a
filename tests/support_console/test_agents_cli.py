"""`onesignin agents`: one JSON object on stdout, errors on stderr with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.cli import onesignin
from tests.pwned_range import RangeStandIn

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return onesignin(env, *args, stdin=stdin)


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": "c" * 40,
        "ONESIGNIN_ARGON2_MEMORY_COST": "8192",
        "ONESIGNIN_ARGON2_TIME_COST": "1",
    }


async def test_agents_add_list_role_disable(env: dict[str, str], database_url: str) -> None:
    done = run(env, "agents", "add", "--email", "Sam@Example.com", "--password", PASSWORD, "--role", "agent")
    assert done.returncode == 0, done.stderr
    added = json.loads(done.stdout)
    assert set(added) == {"sub", "totp_uri"}
    uri = urlsplit(added["totp_uri"])
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert parse_qs(uri.query)["issuer"] == ["One Sign In"]
    secret = parse_qs(uri.query)["secret"][0]
    assert isinstance(pyotp.parse_uri(added["totp_uri"]), pyotp.TOTP)

    # An existing account becomes staff only with its own password; the policy applies to new ones.
    assert run(env, "users", "add", "--email", "ann@example.com", "--password", PASSWORD).returncode == 0
    wrong = run(env, "agents", "add", "--email", "ann@example.com", "--password", "wrong but long enough pass", "--role", "agent")
    assert wrong.returncode == 2 and wrong.stdout == "" and "does not match" in wrong.stderr
    weak = run(env, "agents", "add", "--email", "bob@example.com", "--password", "password123", "--role", "agent")
    assert weak.returncode == 2 and "too common" in weak.stderr
    boss = run(env, "agents", "add", "--email", "ann@example.com", "--password-stdin", "--role", "supervisor", stdin=PASSWORD + "\n")
    assert boss.returncode == 0, boss.stderr
    twice = run(env, "agents", "add", "--email", "ann@example.com", "--password", PASSWORD, "--role", "agent")
    assert twice.returncode == 2 and "already staff" in twice.stderr
    bad_role = run(env, "agents", "add", "--email", "x@example.com", "--password", PASSWORD, "--role", "root")
    assert bad_role.returncode == 2 and bad_role.stdout == ""

    listed = json.loads(run(env, "agents", "list").stdout)["staff"]
    assert [(m["email"], m["role"], m["disabled_at"]) for m in listed] == [
        ("ann@example.com", "supervisor", None),
        ("sam@example.com", "agent", None),
    ]
    assert listed[1]["sub"] == added["sub"] and listed[1]["created_by"].startswith("cli")
    assert secret not in json.dumps(listed)

    promoted = run(env, "agents", "role", "--email", "sam@example.com", "--role", "supervisor")
    assert promoted.returncode == 0 and json.loads(promoted.stdout)["role"] == "supervisor"
    disabled = run(env, "agents", "disable", "--email", "sam@example.com")
    assert disabled.returncode == 0 and json.loads(disabled.stdout)["disabled_at"]
    unknown = run(env, "agents", "disable", "--email", "nobody@example.com")
    assert unknown.returncode == 2 and "no staff member" in unknown.stderr

    # The TOTP secret is stored encrypted, never in the clear; the operator handed the URI over,
    # so the CLI's staff count as enrolled.
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        dump = " ".join(str(v) for v in (await conn.execute(text("SELECT * FROM staff"))).all())
        enrolled = (await conn.execute(text("SELECT count(*) FROM staff WHERE totp_confirmed_at IS NOT NULL"))).scalar()
    await engine.dispose()
    assert secret not in dump
    assert enrolled == 2

    # Each change is audited, naming the account and the operator, like the console's staff.* records.
    trail = json.loads(run(env, "audit", "list", "--account", added["sub"]).stdout)
    assert [(r["action"], r["actor_kind"], r["detail"]) for r in trail] == [
        ("staff.added", "cli", {"role": "agent"}),
        ("staff.role_changed", "cli", {"role": "supervisor"}),
        ("staff.disabled", "cli", None),
    ]
    assert all(r["actor"] for r in trail)


def test_agents_help(env: dict[str, str]) -> None:
    for args in (["agents"], ["agents", "add"], ["agents", "list"], ["agents", "role"], ["agents", "disable"]):
        done = run(env, *args, "--help")
        assert done.returncode == 0 and "usage: onesignin agents" in done.stdout


BREACHED = "This password has appeared in a data breach"
STRONG = "lantern quiver mosaic tundra"


async def test_agents_add_checks_a_new_accounts_password_for_breaches(env: dict[str, str], pwned_range: RangeStandIn) -> None:
    offline = await asyncio.to_thread(run, env, "agents", "add", "--email", "bob@example.com", "--password", "Password123!", "--role", "agent")
    assert offline.returncode == 2 and offline.stdout == "" and f"--password: {BREACHED}" in offline.stderr

    assert (await asyncio.to_thread(run, env, "users", "add", "--email", "ann@example.com", "--password", STRONG)).returncode == 0
    pwned_range.breach(STRONG)
    on = env | {"ONESIGNIN_BREACHED_PASSWORD_API": "true", "ONESIGNIN_BREACHED_PASSWORD_API_URL": pwned_range.url}
    new = await asyncio.to_thread(
        run, on, "agents", "add", "--email", "cy@example.com", "--password-stdin", "--role", "agent", stdin=STRONG + "\n"
    )
    assert new.returncode == 2 and new.stdout == "" and f"--password: {BREACHED}" in new.stderr
    assert len(pwned_range.requests) == 1

    # An existing account's password is only matched, as before: the policy is for new ones.
    existing = await asyncio.to_thread(
        run, on, "agents", "add", "--email", "ann@example.com", "--password-stdin", "--role", "agent", stdin=STRONG + "\n"
    )
    assert existing.returncode == 0, existing.stderr
    assert set(json.loads(existing.stdout)) == {"sub", "totp_uri"}
