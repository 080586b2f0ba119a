"""A relay or worker process says when its pipeline has stopped, so an orchestrator restarts it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
from aiohttp.test_utils import TestServer

from identity.settings import Settings
from identity.web.app import database
from sync.runtime import TASKS, standalone_app
from tests.conftest import TEST_SETTINGS, free_port
from tests.sync.conftest import FAST_SYNC


async def test_healthz_turns_503_when_a_sync_task_stops(database_url: str, tmp_path: Path, kafka_settings: dict[str, Any]) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, secret_key="s" * 40,
        **(TEST_SETTINGS | FAST_SYNC | kafka_settings),  # type: ignore[arg-type]
    )
    app = standalone_app(settings, database(False), relay=False, worker=True)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        async with httpx2.AsyncClient(base_url=str(server.make_url("/"))) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert "onesignin_sync_deliveries_total" in (await http.get("/metrics")).text
            app[TASKS]["sync-deliverer"].cancel()
            for _ in range(200):  # it stops once the unit of work in hand is done
                answer = await http.get("/healthz")
                if answer.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert answer.status_code == 503
            assert answer.json()["stopped"] == ["sync-deliverer"]
    finally:
        await server.close()
