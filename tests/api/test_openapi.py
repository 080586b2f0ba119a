"""The OpenAPI 3.1 document at /api/openapi.json: every API route is in it, it is a valid
OpenAPI 3.1 document, and the hub keeps its promises: schemathesis sends generated requests,
valid and invalid, with real tokens to a running hub and checks there is no 500 and every
response matches the document (status code, content type, headers and body schema)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from identity.api.openapi import api_operations
from identity.settings import Settings
from identity.tokens import digest
from identity.web.app import create_app
from tests.conftest import TEST_SETTINGS, bound_socket
from tests.support import Browser, Hub, RelyingParty, sign_in_through

pytestmark = [
    pytest.mark.e2e,
    # Hypothesis warns when Python's global random state changes while a case is drawn. Here the
    # hub answers from another thread of this process, and what it runs may draw from that state
    # meanwhile; the strategies themselves (schemathesis's) do not, so the warning says nothing.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
ALL_SCOPES = "openid profile email phone address marketing offline_access"


@dataclass
class Live:
    url: str
    person_token: str
    service_token: str
    sub: str
    database: Path | None = None


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[Live]:
    """A hub served from its own thread and event loop (schemathesis calls it synchronously),
    with a linked person, their access token for the service, and the service's own token."""
    directory = tmp_path_factory.mktemp("openapi")
    shutil.copy(sqlite_template, directory / "onesignin.db")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)

    sock = bound_socket()
    port = sock.getsockname()[1]
    hub_settings = Settings(
        data_dir=directory,
        database_url=f"sqlite+aiosqlite:///{directory / 'onesignin.db'}",
        issuer=f"http://127.0.0.1:{port}",
        secret_key="s" * 40,
        **TEST_SETTINGS,  # type: ignore[arg-type]
    )

    async def start() -> tuple[TestServer, Live]:
        app = create_app(hub_settings, migrate=False)
        server = TestServer(
            app, host="127.0.0.1", port=port, socket_factory=lambda *_: sock
        )
        await server.start_server()
        hub = Hub(settings=hub_settings, app=app, url=hub_settings.issuer)
        sub = await hub.add_user(verified=True)
        service = await hub.add_service(name="Store", scope=ALL_SCOPES)
        rp = RelyingParty(
            hub, service.client_id, service.client_secret, scope=ALL_SCOPES
        )
        browser = Browser(hub)
        try:
            token, _ = await sign_in_through(rp, browser)
        finally:
            await browser.aclose()
        answer = await rp.post(
            "/token", {"grant_type": "client_credentials", "scope": "openid"}
        )
        return server, Live(
            hub.url,
            token["access_token"],
            answer.json()["access_token"],
            sub,
            directory / "onesignin.db",
        )

    server, found = run(start())
    try:
        yield found
    finally:
        run(server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _document(live: Live) -> dict[str, Any]:
    response = httpx2.get(f"{live.url}/api/openapi.json", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def test_the_document_is_valid_openapi_3_1(live: Live) -> None:
    document = _document(live)
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_api_route_is_described() -> None:
    app = create_app(Settings(secret_key="s" * 40, **TEST_SETTINGS), migrate=False)  # type: ignore[arg-type]
    routes = api_operations(app)
    assert routes, "no /api/ routes found"
    undescribed = [
        f"{method} {path}"
        for method, path, op in routes
        if op is None and path != "/api/openapi.json"
    ]
    assert undescribed == []


def test_every_described_operation_is_in_the_document(live: Live) -> None:
    app = create_app(Settings(secret_key="s" * 40, **TEST_SETTINGS), migrate=False)  # type: ignore[arg-type]
    document = _document(live)
    for method, path, op in api_operations(app):
        if op is not None:
            assert method.lower() in document["paths"][path], f"{method} {path}"


def _token(live: Live, operation: Any) -> str | None:
    security = operation.definition.raw.get("security") or []
    kinds = {name for requirement in security for name in requirement}
    if "person" in kinds:
        return live.person_token
    if "service" in kinds:
        return live.service_token
    return None


def _operations(live: Live) -> list[Any]:
    schema = schemathesis.openapi.from_dict(_document(live))
    schema.config.update(base_url=live.url)
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(
    live: Live,
    operation: Any,
    mode: schemathesis.GenerationMode,
    headers: dict[str, str],
    checks: list[Any],
) -> Any:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=live.url, headers=headers, checks=checks, timeout=30
        )

    return check


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_the_hub_answers_as_documented(
    live: Live, mode: schemathesis.GenerationMode
) -> None:
    checks = CHECKS + (
        [negative_data_rejection]
        if mode == schemathesis.GenerationMode.NEGATIVE
        else []
    )
    operations = _operations(live)
    assert len(operations) >= 3
    for operation in operations:
        raw = operation.definition.raw
        if mode == schemathesis.GenerationMode.NEGATIVE and not (
            raw.get("parameters") or raw.get("requestBody")
        ):
            continue  # nothing to make invalid
        token = _token(live, operation)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        _fuzz(live, operation, mode, headers, checks)()


def test_without_a_token_every_protected_operation_answers_401(live: Live) -> None:
    for operation in _operations(live):
        if _token(live, operation) is None:
            continue
        path = operation.path.replace("{sub}", live.sub).replace(
            "{id}", "00000000-0000-0000-0000-000000000000"
        )
        response = httpx2.request(operation.method.upper(), live.url + path, timeout=30)
        assert response.status_code == 401, (
            f"{operation.method} {operation.path}: {response.status_code}"
        )
        assert "Bearer" in response.headers.get("WWW-Authenticate", "")


def test_a_person_token_without_openid_gets_the_documented_403(live: Live) -> None:
    """Every operation for a person's token documents 403 (``insufficient_scope``, with its
    challenge), and the hub answers it so to a token the person granted without ``openid``."""
    document = _document(live)
    person_operations = [
        (method, path, answer)
        for path, item in document["paths"].items()
        for method, answer in item.items()
        if any("person" in requirement for requirement in answer.get("security", []))
    ]
    assert len(person_operations) >= 5
    for method, path, answer in person_operations:
        forbidden = answer["responses"].get("403")
        assert forbidden is not None, f"{method} {path}"
        assert "WWW-Authenticate" in forbidden.get("headers", {}), f"{method} {path}"

    assert live.database is not None
    hashed = digest(live.person_token)
    with sqlite3.connect(live.database) as db:
        [(scope,)] = db.execute("SELECT scope FROM tokens WHERE access_hash = ?", (hashed,)).fetchall()
        db.execute("UPDATE tokens SET scope = 'profile email' WHERE access_hash = ?", (hashed,))
    try:
        for method, path, _ in person_operations:
            url = live.url + path.replace("{id}", "00000000-0000-0000-0000-000000000000")
            response = httpx2.request(
                method.upper(), url, headers={"Authorization": f"Bearer {live.person_token}"}, timeout=30
            )
            assert response.status_code == 403, f"{method} {path}: {response.status_code}"
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    finally:
        with sqlite3.connect(live.database) as db:
            db.execute("UPDATE tokens SET scope = ? WHERE access_hash = ?", (scope, hashed))


def test_an_unstorable_path_parameter_answers_a_documented_404(live: Live) -> None:
    document = _document(live)
    for path, token in (
        ("/api/v1/links/%00", live.service_token),
        ("/api/v1/me/rights-requests/%00", live.person_token),
    ):
        response = httpx2.get(live.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 404, path
        template = path.replace("%00", "{sub}" if "links" in path else "{id}")
        assert "404" in document["paths"][template]["get"]["responses"]
