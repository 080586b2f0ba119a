"""Interoperability with a relying-party library nobody here wrote: panva's ``openid-client``
(v6, for Node, pinned in ``rp_node/package-lock.json``), run as a subprocess against the hub
over real HTTP. It authenticates with ``private_key_jwt``, pushes a signed request object
(PAR + JAR) with a DPoP proof, lets the person sign in, then exchanges the code for DPoP-bound
tokens (answering the hub's nonce challenge), calls userinfo with them, refreshes and calls
userinfo again."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest
from joserfc.jwk import ECKey

from tests.identity.oauth.test_par import through
from tests.support import Browser, Hub

RP_DIR = Path(__file__).parent / "rp_node"


@pytest.fixture(scope="session")
def openid_client() -> Path:
    """openid-client installed from the lock file (``npm ci``, once per machine and lock file)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        why = "Node.js and npm are needed for the openid-client interoperability test"
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI must run it (.ci/run installs them)")
        pytest.skip(f"{why} (CI has them)")
    stamp = RP_DIR / "node_modules" / ".installed-lock"
    lock = (RP_DIR / "package-lock.json").read_text()
    with open(RP_DIR / ".npm-ci.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # pytest-xdist workers share the directory
        if not stamp.exists() or stamp.read_text() != lock:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=RP_DIR, check=True, capture_output=True, timeout=240)
            stamp.write_text(lock)
    return RP_DIR / "rp.mjs"


async def read_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"openid-client ended: {(await process.stderr.read()).decode()[-3000:]}")
    message = json.loads(line)
    assert "error" not in message, message
    return message


async def test_openid_client_completes_par_with_a_signed_request_object_and_dpop(
    hub: Hub, browser: Browser, openid_client: Path
) -> None:
    key = ECKey.generate_key("P-256")
    key.ensure_kid()
    redirect_uri = "http://127.0.0.1:9/callback"
    service = await hub.add_service(
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [key.as_dict(private=False)]},
        redirect_uris=[redirect_uri],
        require_par=True,
        require_dpop=True,
    )
    await hub.add_user(verified=True)
    env = os.environ | {
        "ISSUER": hub.url,
        "CLIENT_ID": service.client_id,
        "CLIENT_JWK": json.dumps(key.as_dict(private=True) | {"kid": key.kid}),
        "REDIRECT_URI": redirect_uri,
    }
    process = await asyncio.create_subprocess_exec(
        "node", str(openid_client), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        authorize = (await read_line(process))["authorize"]
        assert authorize.startswith(f"{hub.url}/authorize?") and "request_uri=urn" in authorize
        page = await through(browser, authorize)
        assert page.status_code == 302, page.text[:1000]
        callback = page.headers["location"]
        assert callback.startswith(redirect_uri)
        assert process.stdin is not None
        process.stdin.write(json.dumps({"callback": callback}).encode() + b"\n")
        await process.stdin.drain()
        result = (await read_line(process))["result"]
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()

    assert result["token_type"].lower() == "dpop" and result["refreshed_token_type"].lower() == "dpop"
    assert result["userinfo"]["email"] == "ann@example.com"
    assert result["userinfo_after_refresh"]["sub"] == result["userinfo"]["sub"]
    # What it got is bound: as a plain bearer token it opens nothing.
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        plain = await http.get("/userinfo", headers={"Authorization": f"Bearer {result['refreshed_access_token']}"})
    assert plain.status_code == 401 and plain.json()["error"] == "invalid_token"
