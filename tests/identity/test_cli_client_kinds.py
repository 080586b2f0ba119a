"""``onesignin services add`` for every kind of client, as integration guides use it: what it
prints for each ``--token-endpoint-auth-method``, what it refuses, and a service registered by the
command authenticating to a running hub."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Service
from tests.cli import onesignin
from tests.support import Hub

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(hub: Hub) -> dict[str, str]:
    """The running hub's database, as an operator's shell would name it."""
    return os.environ | {
        "ONESIGNIN_DATA_DIR": str(hub.settings.data_dir),
        "ONESIGNIN_DATABASE_URL": hub.settings.resolved_database_url,
        "ONESIGNIN_SECRET_KEY": hub.settings.secret_key or "",
        "ONESIGNIN_ISSUER": hub.url,
    }


_apps = itertools.count(1)


def add(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Each its own name: `services add` refuses a name another service has.
    return onesignin(env, "services", "add", "--name", f"App {next(_apps)}", *args)


def printed(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def stored(hub: Hub, client_id: str) -> Service:
    async with hub.app[DB]() as db:
        row = await db.scalar(select(Service).where(Service.client_id == client_id))
    assert row is not None
    return row


async def test_a_native_public_client(hub: Hub, env: dict[str, str]) -> None:
    out = printed(
        add(
            env, "--token-endpoint-auth-method", "none", "--application-type", "native",
            "--redirect-uri", "http://127.0.0.1/callback", "--redirect-uri", "com.example.app:/callback",
        )
    )
    assert set(out) == {"client_id"}
    row = await stored(hub, out["client_id"])
    assert (row.token_endpoint_auth_method, row.application_type, row.secret_hash) == ("none", "native", None)
    assert "client_credentials" not in row.grant_types
    # A public client: its client_id alone, and client_credentials is not for it.
    async with httpx2.AsyncClient(base_url=hub.url) as http:
        answer = await http.post("/token", data={"grant_type": "client_credentials", "client_id": out["client_id"]})
    assert answer.status_code == 400 and answer.json()["error"] == "unauthorized_client"


async def test_private_key_jwt_with_a_jwks_file(hub: Hub, env: dict[str, str], tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "2026-12"})
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    out = printed(
        add(env, "--redirect-uri", "https://app.example/cb", "--token-endpoint-auth-method", "private_key_jwt", "--jwks-file", str(jwks_file))
    )
    assert set(out) == {"client_id"}
    async with AsyncOAuth2Client(client_id=out["client_id"], client_secret=key, token_endpoint_auth_method="private_key_jwt") as client:
        client.register_client_auth_method(PrivateKeyJWT(hub.url, alg="ES256"))
        token = await client.fetch_token(f"{hub.url}/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer"


async def test_private_key_jwt_inline_and_by_uri(hub: Hub, env: dict[str, str]) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k"})
    inline = printed(
        add(env, "--redirect-uri", "https://app.example/cb", "--token-endpoint-auth-method", "private_key_jwt",
            "--jwks", json.dumps({"keys": [key.as_dict(private=False)]}))
    )
    assert (await stored(hub, inline["client_id"])).jwks == {"keys": [key.as_dict(private=False)]}
    by_uri = printed(
        add(env, "--redirect-uri", "https://app.example/cb", "--token-endpoint-auth-method", "private_key_jwt",
            "--jwks-uri", "https://app.example/.well-known/jwks.json")
    )
    assert set(by_uri) == {"client_id"}
    assert (await stored(hub, by_uri["client_id"])).jwks_uri == "https://app.example/.well-known/jwks.json"


async def test_secret_methods_print_a_secret(hub: Hub, env: dict[str, str]) -> None:
    for method in ("client_secret_basic", "client_secret_post"):
        out = printed(add(env, "--redirect-uri", "https://app.example/cb", "--token-endpoint-auth-method", method))
        assert set(out) == {"client_id", "client_secret"}
        assert (await stored(hub, out["client_id"])).token_endpoint_auth_method == method
    default = printed(add(env, "--redirect-uri", "https://app.example/cb"))
    assert set(default) == {"client_id", "client_secret"}


async def test_require_par(hub: Hub, env: dict[str, str]) -> None:
    out = printed(add(env, "--redirect-uri", "https://app.example/cb", "--require-par"))
    assert (await stored(hub, out["client_id"])).require_par is True
    assert (await stored(hub, printed(add(env, "--redirect-uri", "https://app.example/cb"))["client_id"])).require_par is False


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--token-endpoint-auth-method", "private_key_jwt"], "one of --jwks, --jwks-file or --jwks-uri"),
        (["--token-endpoint-auth-method", "none", "--jwks-uri", "https://app.example/jwks"], "go with --token-endpoint-auth-method private_key_jwt"),
        (["--token-endpoint-auth-method", "private_key_jwt", "--jwks", "not json"], "--jwks must be a JSON JWK Set"),
        (["--token-endpoint-auth-method", "private_key_jwt", "--jwks-file", "/nonexistent/jwks.json"], "--jwks-file: cannot read"),
        (["--token-endpoint-auth-method", "private_key_jwt", "--jwks", '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'], "--jwks:"),
        (["--token-endpoint-auth-method", "client_secret_jwt"], "invalid choice"),
        (["--application-type", "native", "--redirect-uri", "myapp:/cb"], "private-use scheme"),
        (["--redirect-uri", "com.example.app:/cb"], "absolute http(s) URL"),
    ],
)
def test_refusals(env: dict[str, str], args: list[str], says: str) -> None:
    if "--redirect-uri" not in args:
        args = [*args, "--redirect-uri", "https://app.example/cb"]
    done = add(env, *args)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert says in done.stderr and "Traceback" not in done.stderr


def test_help_names_every_method(env: dict[str, str]) -> None:
    done = onesignin(env, "services", "add", "--help")
    assert done.returncode == 0
    for word in ("--token-endpoint-auth-method", "private_key_jwt", "--jwks-file", "--jwks-uri", "--application-type", "--require-par"):
        assert word in done.stdout
