"""A relay or worker is ready while its database and Kafka answer; once its broker stops,
``/readyz`` answers 503 naming Kafka (and no address), while ``/healthz`` still says it lives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
from aiohttp.test_utils import TestServer

from identity.settings import Settings
from identity.web.app import database
from sync.broker import EmbeddedBroker
from sync.runtime import standalone_app
from tests.conftest import TEST_SETTINGS, free_port
from tests.support import eventually
from tests.sync.conftest import FAST_SYNC


async def test_readyz_names_a_stopped_broker(database_url: str, tmp_path: Path, kafka_settings: dict[str, Any]) -> None:
    broker = EmbeddedBroker()
    await broker.start()
    try:
        settings = Settings(
            data_dir=tmp_path, database_url=database_url, secret_key="s" * 40, readiness_timeout=1.0,
            **(TEST_SETTINGS | FAST_SYNC | kafka_settings | {"kafka_bootstrap_servers": broker.bootstrap}),  # type: ignore[arg-type]
        )
        app = standalone_app(settings, database(False), relay=True, worker=False)
        server = TestServer(app, host="127.0.0.1", port=free_port())
        await server.start_server()
        try:
            async with httpx2.AsyncClient(base_url=str(server.make_url("/")), timeout=30) as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 200
                assert ready.json() == {
                    "status": "ready",
                    "checks": {"database": "ok", "kafka": "ok", "migrations": "ok", "sync": "ok"},
                }
                await broker.stop()

                async def not_ready() -> tuple[httpx2.Response] | None:
                    answer = await http.get("/readyz")
                    return (answer,) if answer.status_code == 503 else None

                (answer,) = await eventually(not_ready, what="/readyz answering 503")
                assert answer.json()["failed"] == ["kafka"]
                assert answer.json()["checks"]["database"] == "ok"
                assert broker.bootstrap not in answer.text
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await server.close()
    finally:
        await broker.stop()
