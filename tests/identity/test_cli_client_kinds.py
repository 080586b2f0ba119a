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
from tests.support import Hub, eventually

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
    # Any service may register keys, for its signed request objects.
    public = printed(add(env, "--redirect-uri", "https://app.example/cb", "--token-endpoint-auth-method", "none",
                         "--jwks-uri", "https://app.example/.well-known/jwks.json"))
    assert (await stored(hub, public["client_id"])).jwks_uri == "https://app.example/.well-known/jwks.json"


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


def update(env: dict[str, str], client_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    return onesignin(env, "services", "update", "--client-id", client_id, *args)


async def test_require_dpop(hub: Hub, env: dict[str, str]) -> None:
    out = printed(add(env, "--redirect-uri", "https://app.example/cb", "--require-dpop", "--require-signed-request-object"))
    assert (await stored(hub, out["client_id"])).require_dpop is True
    assert (await stored(hub, out["client_id"])).require_signed_request_object is True
    assert (await stored(hub, printed(add(env, "--redirect-uri", "https://app.example/cb"))["client_id"])).require_dpop is False


async def test_update_moves_a_service_between_kinds_of_client(hub: Hub, env: dict[str, str]) -> None:
    client_id = printed(add(env, "--redirect-uri", "https://app.example/cb"))["client_id"]
    key = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    jwks = json.dumps({"keys": [key.as_dict(private=False)]})

    out = printed(update(env, client_id, "--token-endpoint-auth-method", "private_key_jwt", "--jwks", jwks))
    assert "client_secret" not in out and out["token_endpoint_auth_method"] == "private_key_jwt"
    row = await stored(hub, client_id)
    assert row.secret_hash is None and row.jwks == {"keys": [key.as_dict(private=False)]}

    # The running hub takes the service's new way of authenticating (its client cache is short).
    async def with_key() -> Any:
        async with AsyncOAuth2Client(client_id=client_id, client_secret=key, token_endpoint_auth_method="private_key_jwt") as client:
            client.register_client_auth_method(PrivateKeyJWT(hub.url, alg="ES256"))
            try:
                return await client.fetch_token(f"{hub.url}/token", grant_type="client_credentials")
            except Exception:  # noqa: BLE001 - refused until the hub re-reads the service
                return None

    assert (await eventually(with_key, what="the key is accepted"))["token_type"] == "Bearer"

    # New keys replace the old; the URL form replaces the inline one.
    printed(update(env, client_id, "--jwks-uri", "https://app.example/.well-known/jwks.json"))
    row = await stored(hub, client_id)
    assert (row.jwks, row.jwks_uri) == (None, "https://app.example/.well-known/jwks.json")

    back = printed(update(env, client_id, "--token-endpoint-auth-method", "client_secret_post"))
    assert back["client_secret"]  # a new secret, shown once
    row = await stored(hub, client_id)
    assert row.secret_hash and (row.jwks, row.jwks_uri) == (None, "https://app.example/.well-known/jwks.json")  # kept
    printed(update(env, client_id, "--remove-jwks"))
    assert (await stored(hub, client_id)).jwks_uri is None
    # Between the two secret methods the secret stays.
    assert "client_secret" not in printed(update(env, client_id, "--token-endpoint-auth-method", "client_secret_basic"))

    public = printed(update(env, client_id, "--token-endpoint-auth-method", "none"))
    assert "client_secret" not in public
    row = await stored(hub, client_id)
    assert row.secret_hash is None and "client_credentials" not in row.grant_types


async def test_update_switches_requirements_and_application_type(hub: Hub, env: dict[str, str]) -> None:
    client_id = printed(add(env, "--redirect-uri", "http://127.0.0.1/callback", "--token-endpoint-auth-method", "none"))["client_id"]
    out = printed(update(env, client_id, "--require-par", "--require-dpop", "--application-type", "native"))
    assert (out["require_par"], out["require_dpop"], out["application_type"]) == (True, True, "native")
    row = await stored(hub, client_id)
    assert (row.require_par, row.require_dpop, row.application_type) == (True, True, "native")
    printed(update(env, client_id, "--no-require-par"))
    row = await stored(hub, client_id)
    assert (row.require_par, row.require_dpop) == (False, True)
    printed(update(env, client_id, "--no-require-dpop"))
    assert (await stored(hub, client_id)).require_dpop is False
    assert printed(update(env, client_id, "--require-signed-request-object"))["require_signed_request_object"] is True
    assert (await stored(hub, client_id)).require_signed_request_object is True
    printed(update(env, client_id, "--no-require-signed-request-object"))
    assert (await stored(hub, client_id)).require_signed_request_object is False


async def test_update_refusals(hub: Hub, env: dict[str, str]) -> None:
    native = printed(add(env, "--application-type", "native", "--token-endpoint-auth-method", "none", "--redirect-uri", "com.example.app:/cb"))
    refusals = [
        (native["client_id"], ["--application-type", "web"], "do not suit --application-type web"),
        (native["client_id"], ["--token-endpoint-auth-method", "private_key_jwt", "--remove-jwks"], "one of --jwks, --jwks-file or --jwks-uri"),
        (native["client_id"], ["--jwks-uri", "ftp://app.example/jwks"], "--jwks-uri must be an absolute http(s) URL"),
        (native["client_id"], ["--token-endpoint-auth-method", "private_key_jwt"], "one of --jwks, --jwks-file or --jwks-uri"),
        (native["client_id"], ["--require-par", "--no-require-par"], "not allowed with"),
        ("no-such-client", ["--require-dpop"], "no service with client_id"),
    ]
    for client_id, args, says in refusals:
        done = update(env, client_id, *args)
        assert done.returncode == 2 and done.stdout == "", (args, done.stdout, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    row = await stored(hub, native["client_id"])
    assert (row.application_type, row.token_endpoint_auth_method, row.jwks_uri) == ("native", "none", None)
