"""The outcome policy shared by profile deliveries and notices, and the loops' backoff: pure
rules, no database, no broker, no HTTP."""

from __future__ import annotations

import datetime as dt

import pytest

from identity.settings import Settings
from sync.backoff import Backoff
from sync.outcomes import DEAD, GONE, RETRY, SETTLE, decide, quarantine_probe, retry_delay
from sync.webhooks import Outcome

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
SETTINGS = Settings(
    secret_key="s" * 40,
    sync_retry_schedule=[5.0, 30.0, 120.0],
    sync_give_up_after=3600.0,
    sync_quarantine_after=600.0,
    sync_quarantine_probe=300.0,
)


def _decide(outcome: Outcome, *, attempts: int = 0, failing_since: dt.datetime | None = None, channel: str = "webhook"):  # type: ignore[no-untyped-def]
    return decide(outcome, attempts=attempts, failing_since=failing_since, now=NOW, channel=channel, settings=SETTINGS)


def test_a_success_settles_and_brings_the_webhook_back() -> None:
    d = _decide(Outcome("ok"), attempts=3, failing_since=NOW - dt.timedelta(minutes=5))
    assert (d.action, d.attempts, d.failing_since, d.next_attempt_at, d.error) == (SETTLE, 4, None, NOW, None)
    assert d.endpoint == "recover"
    assert _decide(Outcome("ok"), channel="topic").endpoint is None  # a topic has no endpoint state


@pytest.mark.parametrize(("attempts", "delay"), [(0, 5.0), (1, 30.0), (2, 120.0), (3, 120.0), (50, 120.0)])
def test_failures_follow_the_schedule_and_its_last_step_repeats(attempts: int, delay: float) -> None:
    d = _decide(Outcome("retry", "HTTP 500", status=500), attempts=attempts, failing_since=NOW - dt.timedelta(seconds=10) if attempts else None)
    assert d.action == RETRY and d.attempts == attempts + 1
    assert d.next_attempt_at == NOW + dt.timedelta(seconds=delay)
    assert d.error == "HTTP 500" and d.endpoint == "failing"


def test_the_first_failure_starts_the_failing_clock_and_later_ones_keep_it() -> None:
    assert _decide(Outcome("retry", "x")).failing_since == NOW
    since = NOW - dt.timedelta(minutes=7)
    assert _decide(Outcome("retry", "x"), attempts=2, failing_since=since).failing_since == since


def test_retry_after_is_never_shortened_but_never_shortens_the_schedule() -> None:
    assert _decide(Outcome("retry", "HTTP 503", status=503, retry_after=60.0)).next_attempt_at == NOW + dt.timedelta(seconds=60)
    assert _decide(Outcome("retry", "HTTP 429", status=429, retry_after=1.0)).next_attempt_at == NOW + dt.timedelta(seconds=5)
    assert retry_delay(2, 90.0, SETTINGS) == 90.0 and retry_delay(2, None, SETTINGS) == 30.0


def test_a_row_failing_for_the_give_up_time_goes_dead_and_leaves_the_endpoint_as_it_was() -> None:
    d = _decide(Outcome("retry", "HTTP 500"), attempts=9, failing_since=NOW - dt.timedelta(seconds=3600))
    assert (d.action, d.attempts, d.next_attempt_at, d.endpoint) == (DEAD, 10, NOW, None)
    assert d.failing_since == NOW - dt.timedelta(seconds=3600)
    assert _decide(Outcome("retry", "HTTP 500"), attempts=9, failing_since=NOW - dt.timedelta(seconds=3599)).action == RETRY


def test_410_disables_the_webhook_and_the_row_waits_without_counting_an_attempt() -> None:
    since = NOW - dt.timedelta(minutes=1)
    d = _decide(Outcome("gone", "HTTP 410", status=410), attempts=2, failing_since=since)
    assert (d.action, d.attempts, d.failing_since, d.next_attempt_at, d.endpoint) == (GONE, 2, since, NOW, "disable")


def test_errors_are_kept_short_and_never_empty() -> None:
    assert _decide(Outcome("retry", "e" * 2000)).error == "e" * 500
    assert _decide(Outcome("retry")).error == "failed"


def test_a_webhook_is_quarantined_once_it_has_failed_for_the_quarantine_time() -> None:
    assert quarantine_probe(None, NOW, SETTINGS) is None
    assert quarantine_probe(NOW - dt.timedelta(seconds=599), NOW, SETTINGS) is None
    assert quarantine_probe(NOW - dt.timedelta(seconds=600), NOW, SETTINGS) == NOW + dt.timedelta(seconds=300)
    # SQLite hands back naive UTC datetimes.
    naive = (NOW - dt.timedelta(hours=2)).replace(tzinfo=None)
    assert quarantine_probe(naive, NOW, SETTINGS) == NOW + dt.timedelta(seconds=300)


def test_backoff_doubles_up_to_its_ceiling_and_starts_again_after_a_success() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.succeeded()
    assert backoff.failed() == 0.5
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


def test_a_scim_server_has_the_webhooks_health_but_is_never_disabled() -> None:
    assert _decide(Outcome("ok"), channel="scim").endpoint == "recover"
    failed = _decide(Outcome("retry", "SCIM server: HTTP 429", status=429, retry_after=600.0), channel="scim")
    assert failed.action == RETRY and failed.endpoint == "failing"
    assert failed.next_attempt_at == NOW + dt.timedelta(seconds=600)  # not sooner than asked
    assert _decide(Outcome("retry", "x"), failing_since=NOW - dt.timedelta(hours=2), channel="scim").action == DEAD


def test_a_shared_signals_receivers_refusal_is_final_and_its_endpoint_counts_like_a_webhook() -> None:
    # RFC 8935 section 2.3: a 400 naming its err will never take that SET: dead at once.
    d = _decide(Outcome("rejected", "refused by the receiver: invalid_key: unknown kid", status=400), channel="ssf")
    assert (d.action, d.attempts, d.next_attempt_at, d.endpoint) == (DEAD, 1, NOW, None)
    assert d.error == "refused by the receiver: invalid_key: unknown kid"
    # Other failures and successes mark the stream's push endpoint failing and healthy again.
    assert _decide(Outcome("retry", "HTTP 500"), channel="ssf").endpoint == "failing"
    assert _decide(Outcome("ok"), channel="ssf").endpoint == "recover"
