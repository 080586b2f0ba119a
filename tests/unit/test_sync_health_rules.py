"""The pure rules behind the console's service pages: which role opens which page, the latency
histogram's buckets and quantiles, and the SVG charts (failures drawn in red, figures in words)."""

from __future__ import annotations

import datetime as dt

import pytest

from identity.db.models import LATENCY_BOUNDS
from identity.rollups import BUCKETS, Point, bucket_of, quantile
from identity.support import access, charts


@pytest.mark.parametrize(
    ("path", "opened_by"),
    [
        ("/", {"agent", "supervisor"}),
        ("/people/abc", {"agent", "supervisor"}),
        ("/people/abc/edit", {"agent", "supervisor"}),
        ("/audit", {"agent", "supervisor"}),
        ("/agents", {"agent", "supervisor"}),
        ("/services", {"admin", "service_owner"}),
        ("/services/abc/redeliver", {"admin", "service_owner"}),
        ("/admin/staff", {"admin"}),
        ("/admin/staff/x/role", {"admin"}),
        ("/servicesx", set()),
        ("/people-search", set()),
        ("/anything-else", set()),
    ],
)
def test_each_role_opens_only_its_pages(path: str, opened_by: set[str]) -> None:
    assert {role for role in ("agent", "supervisor", "admin", "service_owner") if access.allowed(role, path)} == opened_by


def test_the_commands_know_every_staff_role() -> None:
    from identity.cli import STAFF_ROLES
    from identity.support.staff import ROLES

    assert STAFF_ROLES == list(ROLES)


def test_latency_buckets_and_quantiles() -> None:
    assert bucket_of(0.0) == 0 and bucket_of(0.05) == 0 and bucket_of(0.051) == 1
    assert bucket_of(3600) == len(LATENCY_BOUNDS) - 1 and bucket_of(1e9) == BUCKETS - 1
    assert quantile([0] * BUCKETS, 0.5) is None
    histogram = [0] * BUCKETS
    histogram[bucket_of(0.2)] = 98  # (0.1, 0.25]
    histogram[bucket_of(20)] = 2  # (10, 30]
    p50, p99 = quantile(histogram, 0.5), quantile(histogram, 0.99)
    assert p50 is not None and 0.1 < p50 <= 0.25
    assert p99 is not None and 10 < p99 <= 30
    histogram[-1] = 1000
    assert quantile(histogram, 0.99) == LATENCY_BOUNDS[-1]  # beyond the last bound: its lower edge


def _points(failed: list[int]) -> list[Point]:
    start = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.UTC)
    return [
        Point(at=start + dt.timedelta(minutes=i), minutes=1, ok=10, failed=f, dead=0, backlog=f * 3, p50=0.2, p99=1.5)
        for i, f in enumerate(failed)
    ]


def test_the_charts_draw_failures_in_red_and_say_their_figures() -> None:
    svgs = charts.health_charts(_points([0, 0, 5, 10]))
    assert len(svgs) == 5
    per_minute, rate, delay, backlog, dead = (str(s) for s in svgs)
    assert per_minute.startswith("<svg") and "<script" not in per_minute and "style=" not in per_minute
    assert per_minute.count(f'fill="{charts.FAILED}"') >= 3  # two red bars and the legend
    assert 'aria-label="Deliveries per minute: answered latest 10, highest 10; failed latest 10, highest 10"' in per_minute
    assert "failed attempts latest 50%" in rate
    assert "p99 latest 1.5 s" in delay and "<polyline" in delay
    assert "waiting latest 30" in backlog
    assert "given up none" not in dead and "given up latest 0" in dead
    quiet = str(charts.health_charts(_points([0, 0, 0, 0]))[0])
    assert quiet.count(f'fill="{charts.FAILED}"') == 1  # the legend only


def test_chart_scales_are_round() -> None:
    assert [charts.nice_max(v) for v in (0, 0.3, 1, 7, 12, 180, 999)] == [1, 0.5, 1, 10, 20, 200, 1000]


def test_an_empty_chart_says_so() -> None:
    quiet = [Point(at=dt.datetime(2026, 12, 6, 1, i, tzinfo=dt.UTC), minutes=1, ok=0, failed=0, dead=0, backlog=None, p50=None, p99=None) for i in range(3)]
    per_minute, _, delay, backlog, _ = (str(s) for s in charts.health_charts(quiet))
    assert "nothing sent in this span" in per_minute and "no answers in this span" in delay and "nothing waiting when sampled" in backlog
    assert "nothing sent in this span" not in str(charts.health_charts(_points([1]))[0])
