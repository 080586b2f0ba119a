"""The hub's Prometheus metrics (which name every service's client_id) are served on a port of
their own, on loopback unless configured otherwise, like the relay's and the worker's: the
public port answers 404 for /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from sync.runtime import METRICS_URL
from tests.cli import onesignin
from tests.conftest import free_port
from tests.support import Hub


async def test_the_public_port_has_no_metrics_and_the_metrics_port_has_them(hub: Hub) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        public = await http.get(f"{hub.url}/metrics")
        assert public.status_code == 404
        assert "onesignin_" not in public.text
        private = await http.get(hub.app[METRICS_URL])
    assert private.status_code == 200
    assert private.headers["content-type"].startswith("text/plain")
    assert "onesignin_outbox_lag_seconds" in private.text
    where = urlsplit(hub.app[METRICS_URL])
    assert where.hostname == "127.0.0.1" and where.port != urlsplit(hub.url).port


@pytest.mark.e2e
def test_serve_answers_metrics_on_its_metrics_port_only(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESIGNIN_")} | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_ISSUER": f"http://127.0.0.1:{port}",
        "ONESIGNIN_SECRET_KEY": "m" * 40,
    }
    serve = ["serve", "--port", str(port), "--no-sync"]
    hub = subprocess.Popen([sys.executable, "-m", "identity.cli", *serve, "--metrics-port", str(metrics_port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        started = json.loads(hub.stdout.readline())  # type: ignore[union-attr]
        assert started["metrics"] == f"http://127.0.0.1:{metrics_port}/metrics"
        for _ in range(600):  # bounded wait until it listens, not a timing assertion
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        assert httpx2.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        scraped = httpx2.get(started["metrics"])
        assert scraped.status_code == 200 and "onesignin_outbox_lag_seconds" in scraped.text
    finally:
        hub.terminate()
        hub.wait(timeout=60)
        hub.stdout.close()  # type: ignore[union-attr]

    same = onesignin(env, *serve, "--metrics-port", str(port))
    assert same.returncode == 2 and "--metrics-port must differ from --port" in same.stderr
