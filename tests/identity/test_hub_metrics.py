"""The hub's own metrics at /metrics, read after real requests: HTTP requests by route template
(never the raw path) and status with their latency, sign-ins (succeeded, failed, throttled),
second-factor codes (asked, passed, failed), tokens by grant type, the database pool; and the
gauges read from the database, at most GAUGE_SECONDS old when scraped."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from identity.appkeys import DB
from identity.db.models import Service, utcnow
from identity.metrics import HubMetrics
from sync import runtime
from sync.runtime import METRICS_URL
from tests.identity.pages.test_two_step import code_step, enrol, later, password_step
from tests.support import PASSWORD, Browser, Hub, RelyingParty


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # The first wrong password already makes the next attempt wait: "throttled" is reached at once.
    return {"throttle_account_failures": 1}


async def scrape(hub: Hub) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx2.AsyncClient(timeout=30) as http:
        text = (await http.get(hub.app[METRICS_URL])).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_requests_sign_ins_second_factor_and_tokens_are_counted(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    service = await hub.add_service(name="Shop")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    for _ in range(2):
        assert (await rp.post("/token", {"grant_type": "client_credentials"})).status_code == 200
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        for uid in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
            await http.get(f"/i/{uid}")
        assert (await http.get("/no/such/page-123")).status_code == 404

    # A wrong password, then a refusal while its wait runs, then (the wait over) the right one.
    page = await browser.go("/sign-in")
    wrong = await browser.submit(page, "/sign-in", email="ann@example.com", password="not the password")
    assert wrong.status_code in (400, 429)
    throttled = await browser.submit(page, "/sign-in", email="ann@example.com", password=PASSWORD)
    assert throttled.status_code == 429
    await _clear_throttles(hub)
    assert (await browser.sign_in()).status_code == 200
    totp, _ = await enrol(browser)
    other = Browser(hub)
    try:
        assert (await password_step(other)).status_code == 303  # the code is asked for
        assert (await code_step(other, "000000" if totp.now() != "000000" else "111111")).status_code in (400, 429)
        await _clear_throttles(hub)
        assert (await code_step(other, later(totp))).status_code == 303  # (the enrolment used this step's code)
    finally:
        await other.aclose()

    samples = await scrape(hub)
    assert value(samples, "onesignin_tokens_issued_total", grant_type="client_credentials") == 2
    assert value(samples, "onesignin_tokens_issued_total", grant_type="refresh_token") == 0  # present, zero
    assert ("onesignin_tokens_issued_total", frozenset({("grant_type", "refresh_token")})) in samples
    assert value(samples, "onesignin_http_requests_total", route="/token", method="POST", status="200") == 2
    # Two ids, one series: the route's template, never the raw path.
    by_uid = [k for k in samples if k[0] == "onesignin_http_requests_total" and ("route", "/i/{uid}") in k[1] and ("method", "GET") in k[1]]
    assert sum(samples[k] for k in by_uid) >= 2
    assert not [k for k in samples if any(v in ("/i/aaaaaaaaaaaa", "/no/such/page-123") for _, v in k[1])]
    assert value(samples, "onesignin_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(samples, "onesignin_http_request_duration_seconds_count", route="/token", method="POST") == 2
    assert value(samples, "onesignin_http_request_duration_seconds_bucket", route="/token", method="POST", le="+Inf") == 2

    assert value(samples, "onesignin_sign_ins_total", result="failed") == 1
    assert value(samples, "onesignin_sign_ins_total", result="throttled") == 1
    assert value(samples, "onesignin_sign_ins_total", result="succeeded") == 2  # the password alone, then with the code
    assert value(samples, "onesignin_second_factor_total", result="asked") == 1
    assert value(samples, "onesignin_second_factor_total", result="failed") == 1
    assert value(samples, "onesignin_second_factor_total", result="passed") == 1

    size = value(samples, "onesignin_db_pool_size")
    assert size == (1 if hub.settings.resolved_database_url.startswith("sqlite") else hub.settings.database_pool_size)
    assert 0 <= value(samples, "onesignin_db_pool_checked_out") <= size
    assert value(samples, "onesignin_db_pool_overflow") == 0


async def _clear_throttles(hub: Hub) -> None:
    from sqlalchemy import delete

    from identity.appkeys import DB
    from identity.db.models import Throttle

    async with hub.app[DB].begin() as db:
        await db.execute(delete(Throttle))


def test_the_route_cache_keeps_one_series_per_route_method_and_status() -> None:
    metrics = HubMetrics()
    for seconds in (0.001, 0.002, 0.5):
        metrics.request("/token", "POST", 200, seconds)
    metrics.request("/token", "POST", 401, 0.001)
    for made_up in ("BREW", "WHEN", "X" * 50):  # any token is a method to HTTP: not a series each
        metrics.request("/token", made_up, 405, 0.001)
    assert metrics.http_requests.labels("/token", "other", "405")._value.get() == 3
    assert len(metrics._children) == 3
    assert metrics.http_requests.labels("/token", "POST", "200")._value.get() == 3
    assert metrics.http_requests.labels("/token", "POST", "401")._value.get() == 1
    samples: dict[str, Any] = {
        s.name + str(sorted(s.labels.items())): s.value for f in metrics.registry.collect() for s in f.samples
    }
    assert samples["onesignin_http_request_duration_seconds_count[('method', 'POST'), ('route', '/token')]"] == 4


async def _quarantine(hub: Hub, client_id: str, quarantined: bool) -> None:
    async with hub.app[DB].begin() as db:
        await db.execute(
            update(Service).where(Service.client_id == client_id).values(webhook_quarantined_at=utcnow() if quarantined else None)
        )


async def test_a_scrape_reads_the_gauges_when_they_are_older_than_gauge_seconds(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "GAUGE_SECONDS", 3600.0)
    store = await hub.add_service(name="Store")
    await _quarantine(hub, store.client_id, True)
    # Never read yet: the scrape reads them, and sees the service as it is now.
    assert value(await scrape(hub), "onesignin_sync_quarantined_endpoints") == 1
    await _quarantine(hub, store.client_id, False)
    # Read less than GAUGE_SECONDS ago: the figures last read.
    assert value(await scrape(hub), "onesignin_sync_quarantined_endpoints") == 1
    monkeypatch.setattr(runtime, "GAUGE_SECONDS", 0.0)
    assert value(await scrape(hub), "onesignin_sync_quarantined_endpoints") == 0
