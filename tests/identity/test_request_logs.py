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


def _serve(tmp_path: Path, port: int, flush_seconds: str, errors: Path) -> subprocess.Popen[str]:
    env = os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_SECRET_KEY": "c" * 40,
        "ONESIGNIN_ISSUER": f"http://127.0.0.1:{port}",
        "ONESIGNIN_SYNC_IN_PROCESS": "false",
        "ONESIGNIN_LOG_FLUSH_SECONDS": flush_seconds,
    }
    with errors.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
        )


def _answered(port: int, rid: str) -> None:
    """Once the hub listens, one request with the id ``rid``, answered."""
    until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), what="serve listening")
    assert httpx2.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-Id": rid}).status_code == 200


def _access_lines(errors: Path, rid: str) -> list[str]:
    return [line for line in errors.read_text().splitlines() if "onesignin.access" in line and rid in line]


def test_a_serving_hub_holds_its_access_lines_until_the_interval_or_its_end(tmp_path: Path) -> None:
    """Batched (a minute, the longest allowed): the line of an answered request is not written yet (were each line
    written at once it would be, before the answer is sent), and SIGTERM writes it."""
    port, errors = free_port(), tmp_path / "stderr"
    hub = _serve(tmp_path, port, "60", errors)
    try:
        _answered(port, "req-held-0001")
        assert _access_lines(errors, "req-held-0001") == []
    finally:
        hub.terminate()
        hub.wait(timeout=30)
    assert len(_access_lines(errors, "req-held-0001")) == 1


def test_a_serving_hub_writes_its_access_lines_within_the_interval(tmp_path: Path) -> None:
    port, errors = free_port(), tmp_path / "stderr"
    hub = _serve(tmp_path, port, "0.2", errors)
    try:
        _answered(port, "req-soon-0001")
        until(lambda: _access_lines(errors, "req-soon-0001"), what="the access line written while serving")
        assert hub.poll() is None
    finally:
        hub.terminate()
        hub.wait(timeout=30)


def test_with_batching_off_a_line_is_written_before_the_answer(tmp_path: Path) -> None:
    port, errors = free_port(), tmp_path / "stderr"
    hub = _serve(tmp_path, port, "0", errors)
    try:
        _answered(port, "req-once-0001")
        assert len(_access_lines(errors, "req-once-0001")) == 1
    finally:
        hub.terminate()
        hub.wait(timeout=30)
