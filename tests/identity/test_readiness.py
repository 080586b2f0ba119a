"""``/healthz`` says the process is up; ``/readyz`` whether it can work: 503 with a JSON body
naming what failed (no address, no secret, no trace) once its database stops answering."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import make_url

from identity.settings import Settings
from identity.web.app import create_app
from tests.conftest import HUB_SECRET_KEY, TEST_SETTINGS, free_port
from tests.support import Hub, eventually


async def test_a_working_hub_is_ready(hub: Hub) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        answer = await http.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}


class Cut:
    """A TCP path to Postgres that the test can cut: the database becomes unreachable for the
    hub behind it (the shared server itself stays up)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Cut:
        self.server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)
        return self

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        assert self.server is not None
        self.server.close()
        for task in list(self.pipes):
            task.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None and self.server.is_serving():
            await self.cut()


@pytest.fixture
async def cut_hub(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Cut]]:
    if not database_url.startswith("postgresql"):
        pytest.skip("an unreachable database is a server's; SQLite is a file")
    url = make_url(database_url)
    async with Cut(url.host or "127.0.0.1", url.port or 5432) as path:
        port = free_port()
        settings = Settings(
            data_dir=tmp_path,
            database_url=url.set(host="127.0.0.1", port=path.port).render_as_string(hide_password=False),
            issuer=f"http://127.0.0.1:{port}",
            secret_key=HUB_SECRET_KEY,
            readiness_timeout=1.0,
            **TEST_SETTINGS,  # type: ignore[arg-type]
        )
        server = TestServer(create_app(settings, migrate=False), host="127.0.0.1", port=port)
        await server.start_server()
        try:
            yield settings.issuer, path
        finally:
            await server.close()


async def test_readyz_names_an_unreachable_database(cut_hub: tuple[str, Cut]) -> None:
    url, path = cut_hub
    async with httpx2.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.get("/readyz")).status_code == 200
        await path.cut()

        async def not_ready() -> tuple[httpx2.Response] | None:
            answer = await http.get("/readyz")
            return (answer,) if answer.status_code == 503 else None

        (answer,) = await eventually(not_ready, what="/readyz answering 503")
        assert answer.json() == {
            "status": "not ready",
            "failed": ["database", "migrations"],
            "checks": {"database": "unreachable", "migrations": "unknown"},
        }
        assert "127.0.0.1" not in answer.text and "Traceback" not in answer.text
        assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_readyz_says_when_the_database_is_not_at_this_versions_revision(hub: Hub) -> None:
    """Behind (a migration this version needs was not run): not ready. At a revision this version
    does not know (a newer version migrated it, during a rolling upgrade): still ready."""
    from sqlalchemy import text

    from identity.appkeys import ENGINE
    from identity.db.migrate import head_revision

    async def at(revision: str) -> httpx2.Response:
        async with hub.app[ENGINE].begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
        async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
            return await http.get("/readyz")

    behind = await at("0013")
    assert behind.status_code == 503
    assert behind.json() == {"status": "not ready", "failed": ["migrations"], "checks": {"database": "ok", "migrations": "behind"}}
    newer = await at("9999_from_a_newer_version")
    assert newer.status_code == 200 and newer.json()["checks"]["migrations"] == "newer"
    assert (await at(head_revision())).json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}
