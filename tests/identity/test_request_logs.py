"""Every request has an id (a well-formed incoming X-Request-Id, else a new one), returned in
X-Request-Id and carried by every log line written while answering it; each request leaves one
access log line without its query string. ONESIGNIN_LOG_FORMAT=json makes each line a JSON object."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from identity.logs import RequestIdFilter
from tests.conftest import free_port
from tests.support import Hub, answers, until


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO)
    return caplog


async def test_request_ids_and_the_access_log(hub: Hub, records: pytest.LogCaptureFixture) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        given = await http.get("/sign-in?next=/account&secret=hunter2", headers={"X-Request-Id": "req-0001-from-proxy"})
        made = await http.get("/healthz", headers={"X-Request-Id": "bad id"})
        refused = await http.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": "not.a.jwt",
            },
            headers={"X-Request-Id": "req-0002-token"},
        )
        missing = await http.get("/no-such-page", headers={"X-Request-Id": "req-0003-missing"})
    assert given.headers["X-Request-Id"] == "req-0001-from-proxy"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])
    assert refused.status_code == 401 and refused.headers["X-Request-Id"] == "req-0002-token"
    assert missing.status_code == 404 and missing.headers["X-Request-Id"] == "req-0003-missing"

    access = {r.request_id: r for r in records.records if r.name == "onesignin.access"}  # type: ignore[attr-defined]
    assert access["req-0001-from-proxy"].getMessage().startswith("GET /sign-in 200 ")
    assert access["req-0001-from-proxy"].path == "/sign-in"  # type: ignore[attr-defined]
    assert access[made.headers["X-Request-Id"]].status == 200  # type: ignore[attr-defined]
    assert access["req-0003-missing"].status == 404  # type: ignore[attr-defined]
    # (the test's own HTTP client and test server log full URLs; the hub's loggers never do)
    assert not [r for r in records.records if r.name.startswith(("onesignin", "identity")) and "hunter2" in r.getMessage()]
    # A line the token endpoint logged while refusing the assertion carries that request's id.
    inside = [r for r in records.records if r.name == "identity.oidc.client_auth"]
    assert inside and {r.request_id for r in inside} == {"req-0002-token"}  # type: ignore[attr-defined]


def test_serve_logs_json_lines(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_SECRET_KEY": "c" * 40,
        "ONESIGNIN_ISSUER": f"http://127.0.0.1:{port}",
        "ONESIGNIN_LOG_FORMAT": "json",
        "ONESIGNIN_SYNC_IN_PROCESS": "false",
    }
    hub = subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), what="serve listening")
        answer = httpx2.get(f"http://127.0.0.1:{port}/sign-in?code=abc123secret", headers={"X-Request-Id": "req-json-0001"}, cookies={"onesignin": "cookie-secret"})
        assert answer.headers["X-Request-Id"] == "req-json-0001"
    finally:
        hub.terminate()
        _, err = hub.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "onesignin.access" and line.get("request_id") == "req-json-0001"]
    assert len(access) == 1
    assert {k: access[0][k] for k in ("method", "path", "status")} == {"method": "GET", "path": "/sign-in", "status": 200}
    assert isinstance(access[0]["duration_ms"], float)
    assert "abc123secret" not in err and "cookie-secret" not in err
