"""Sync-health charts as server-rendered SVG: no JavaScript, no inline style (colours are SVG
presentation attributes, which the console's CSP allows), each chart an ``img`` with a text
alternative that states its figures. Pure functions of :class:`identity.rollups.Point` lists;
titles, legends and figures are written in the console's language of the moment (call them while
rendering a page)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

from identity.i18n import format_number, format_percent
from identity.rollups import Point
from identity.support.words import _

WIDTH, HEIGHT = 600, 170
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 26, 22

OK = "#2f6fb3"
FAILED = "#d32f2f"
P99 = "#7b1fa2"
BACKLOG = "#e08a00"
DEAD = "#6d0000"


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]
    colour: str
    kind: str = "bar"  # "bar" (stacked with other bars) or "line"


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def seconds(value: float) -> str:
    """A duration with its SI unit (written the same in English and German), the number the
    language's way (``1.5 s``, ``1,5 s``)."""
    if value >= 3600:
        return f"{format_number(value / 3600, significant=3)} h"
    if value >= 60:
        return f"{format_number(value / 60, significant=3)} min"
    if value >= 1:
        return f"{format_number(value, significant=3)} s"
    return f"{format_number(value * 1000, significant=3)} ms"


def count(value: float) -> str:
    return format_number(value, significant=3) if value < 1000 else format_number(round(value))


def percent(value: float) -> str:
    """A percentage (``value`` out of 100) the language's way (``33.3%``, ``33,3 %``)."""
    return format_percent(value / 100, decimals=1, exact=False)


def chart(
    title: str, points: Sequence[Point], series: Sequence[Series], *, fmt: Callable[[float], str] = count, top: float | None = None,
    empty: str | None = None,
) -> Markup:
    """One chart over ``points`` (their times on the x axis): bars stacked, lines over them;
    ``empty`` is written across it when every value is zero or missing."""
    n = max(1, len(points))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bars = [s for s in series if s.kind == "bar"]
    lines = [s for s in series if s.kind == "line"]
    stacked = [sum((s.values[i] or 0.0) for s in bars) for i in range(len(points))]
    highest = max([*stacked, *[v for s in lines for v in s.values if v is not None], 0.0])
    ymax = top if top is not None else nice_max(highest)
    slot = plot_w / n

    def y(value: float) -> float:
        return TOP + plot_h - min(value, ymax) / ymax * plot_h

    parts = [
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>',
    ]
    # Legend, right-aligned in the title row.
    x = WIDTH - RIGHT
    for s in reversed(series):
        label = escape(s.label)
        x -= 8 + 7 * len(s.label)
        parts.append(f'<rect x="{x}" y="7" width="10" height="10" fill="{s.colour}"/>')
        parts.append(f'<text x="{x + 14}" y="16" font-size="11" fill="#222">{label}</text>')
        x -= 14
    for frac in (0.0, 0.5, 1.0):
        gy = y(ymax * frac)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#ddd" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{gy + 4:.1f}" font-size="10" text-anchor="end" fill="#555">{escape(fmt(ymax * frac))}</text>')
    for i in range(len(points)):
        base = 0.0
        for s in bars:
            v = s.values[i] or 0.0
            if v <= 0:
                continue
            y0, y1 = y(base), y(base + v)
            parts.append(
                f'<rect x="{LEFT + i * slot + slot * 0.1:.1f}" y="{y1:.1f}" width="{max(1.0, slot * 0.8):.1f}" height="{max(1.0, y0 - y1):.1f}" fill="{s.colour}"/>'
            )
            base += v
    for s in lines:
        run: list[str] = []
        for i, v in enumerate(s.values):
            if v is None:
                if run:
                    parts.append(_polyline(run, s.colour))
                run = []
                continue
            run.append(f"{LEFT + (i + 0.5) * slot:.1f},{y(v):.1f}")
        if run:
            parts.append(_polyline(run, s.colour))
    if not any(v for s in series for v in s.values if v is not None):
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" font-size="12" text-anchor="middle" fill="#777">'
            f"{escape(empty or _('none in this span'))}</text>"
        )
    if points:
        last = len(points) - 1
        for i, anchor in ((0, "start"), (last // 2, "middle"), (last, "end")):
            x_at = LEFT if anchor == "start" else WIDTH - RIGHT if anchor == "end" else LEFT + (i + 0.5) * slot
            parts.append(
                f'<text x="{x_at:.1f}" y="{HEIGHT - 6}" font-size="10" text-anchor="{anchor}" fill="#555">{points[i].at:%H:%M}</text>'
            )
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#999" stroke-width="1"/>')
    # Translators: a chart's text alternative: its title, then each line or bar's figures, e.g.
    # "Backlog: waiting latest 30, highest 30".
    summary = escape(_("%(chart)s: %(figures)s", chart=title, figures="; ".join(_describe(s, fmt) for s in series)))
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{summary}" viewBox="0 0 {WIDTH} {HEIGHT}">'
        f"<title>{summary}</title>{''.join(parts)}</svg>"
    )


def _polyline(points: list[str], colour: str) -> str:
    if len(points) == 1:
        cx, cy = points[0].split(",")
        return f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>'
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2"/>'


def _describe(s: Series, fmt: Callable[[float], str]) -> str:
    known = [v for v in s.values if v is not None]
    if not known:
        # Translators: a chart's series with no figure at all in the span, e.g. "waiting none".
        return _("%(series)s none", series=s.label)
    # Translators: a chart's series, its last figure and its highest, e.g. "failed latest 10, highest 12".
    return _("%(series)s latest %(latest)s, highest %(highest)s", series=s.label, latest=fmt(known[-1]), highest=fmt(max(known)))


def health_charts(points: Sequence[Point]) -> list[Markup]:
    """The five charts of a service's sync health over one window."""
    rate = [p.failure_rate * 100 if p.failure_rate is not None else None for p in points]
    return [
        chart(
            _("Deliveries per minute"),
            points,
            [
                # Translators: a chart's legend: attempts the service answered (successfully).
                Series(_("answered"), [p.ok / p.minutes for p in points], OK),
                # Translators: a chart's legend: attempts that failed.
                Series(_("failed"), [p.failed / p.minutes for p in points], FAILED),
            ],
            empty=_("nothing sent in this span"),
        ),
        chart(
            _("Failure rate"), points, [Series(_("failed attempts"), [r or 0.0 for r in rate], FAILED)],
            fmt=percent, top=100.0, empty=_("no failures in this span"),
        ),
        chart(
            _("Delay from commit to answer"),
            points,
            # The 50th and 99th percentiles: written the same in English and German.
            [Series("p50", [p.p50 for p in points], OK, "line"), Series("p99", [p.p99 for p in points], P99, "line")],
            fmt=seconds,
            empty=_("no answers in this span"),
        ),
        chart(
            _("Backlog"),
            points,
            # Translators: a chart's legend: deliveries and notices waiting to be sent.
            [Series(_("waiting"), [p.backlog for p in points], BACKLOG, "line")],
            empty=_("nothing waiting when sampled"),
        ),
        chart(
            _("Dead letters"),
            points,
            # Translators: a chart's legend: deliveries and notices whose retries gave up.
            [Series(_("given up"), [float(p.dead) for p in points], DEAD)],
            empty=_("none given up in this span"),
        ),
    ]
