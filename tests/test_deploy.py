"""``deploy/``: the Grafana dashboard and the Prometheus alert rules.

The dashboard is checked against Grafana's own dashboard model, as Grafana publishes it in the
``grafana-foundation-sdk`` package (generated from Grafana's schemas; panel options and field
config by panel type, queries by data source type): read into those models, written back, nothing
may be lost (a key the model does not have, or a value in the wrong place, is dropped or changed),
and every value must be of the type the model declares (enums among their values). Every query
(dashboard and alert rules) is parsed with a PromQL parser (``promql-parser``), and every metric
it names must be one the hub, its relays or its workers export (or Prometheus's own ``up`` and
the blackbox exporter's ``probe_success``)."""

from __future__ import annotations

import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from identity.metrics import HubMetrics
from sync.metrics import SyncMetrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "onesignin.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
SCRAPE = ROOT / "deploy" / "prometheus" / "scrape.yaml"
#: Not the hub's: Prometheus's own, and the blackbox exporter's probe of /readyz.
ELSEWHERE = {"up", "probe_success"}
#: Grafana's interval variables, given a value the parser accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def exported() -> set[str]:
    """Every series name the processes' registries expose (a counter ``x`` as ``x_total``)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names = set()
    for registry in (SyncMetrics().registry, HubMetrics().registry):
        for family in registry.collect():
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (a selector without one is refused)."""
    promql_parser = pytest.importorskip("promql_parser")
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    found: set[str | None] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)  # raises on a syntax error
    assert None not in found, f"a selector without a metric name in {expr}"
    return typing.cast(set[str], found)


# -- the dashboard ------------------------------------------------------------------------------


def lost(given: Any, kept: Any, path: str = "") -> list[str]:
    """Where ``kept`` (the dashboard written back from Grafana's models) lacks or changed what
    ``given`` had."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [f"{path}: not an object in Grafana's model"]
        return [p for key, value in given.items() for p in (
            lost(value, kept[key], f"{path}.{key}") if key in kept else [f"{path}.{key}: not in Grafana's model"]
        )]
    if isinstance(given, list):
        if not isinstance(kept, list) or len(kept) != len(given):
            return [f"{path}: not the same list in Grafana's model"]
        return [p for i, (a, b) in enumerate(zip(given, kept, strict=True)) for p in lost(a, b, f"{path}[{i}]")]
    return [] if given == kept else [f"{path}: {given!r} became {kept!r}"]


def mistyped(value: Any, hint: Any, path: str) -> list[str]:
    """Where ``value`` (read into Grafana's models) is not of the type the model declares."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (Any, object, None) or value is None and type(None) in args:
        return []
    if origin in (typing.Union, types.UnionType):
        tries = [mistyped(value, arm, path) for arm in args if arm is not type(None)]
        return [] if any(not t for t in tries) else min(tries, key=len)
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is none of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [p for i, item in enumerate(value) for p in mistyped(item, args[0] if args else Any, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        return [p for k, v in value.items() for p in mistyped(v, args[1] if args else Any, f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return [] if isinstance(value, hint) or value in {m.value for m in hint} else [f"{path}: {value!r} is not a {hint.__name__}"]
    if hint is float:
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else [f"{path}: {value!r} is not a number"]
    if hint is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: {value!r} is not an integer"]
    if hint in (str, bool):
        return [] if isinstance(value, hint) else [f"{path}: {value!r} is not a {hint.__name__}"]
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return [f"{path}: {type(value).__name__} where Grafana's model has {hint.__name__}"]
        hints = typing.get_type_hints(hint)
        return [p for name, h in hints.items() if hasattr(value, name) for p in mistyped(getattr(value, name), h, f"{path}.{name}")]
    return []


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    sdk = pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options by panel type, queries by data source type
    model = Dashboard.from_json(dashboard)
    assert not mistyped(model, Dashboard, "dashboard"), sdk
    written = json.loads(json.dumps(model, cls=JSONEncoder))
    assert not lost(dashboard, written, "dashboard")


def test_the_dashboard_shows_what_the_processes_export(dashboard: dict[str, Any]) -> None:
    known = exported() | ELSEWHERE
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    shown: set[str] = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names <= known, (panel["title"], names - known)
            shown |= names
    # HTTP, sign-ins, tokens, the pool and the sync pipeline each have their panels.
    for family in (
        "onesignin_http_requests_total", "onesignin_http_request_duration_seconds_bucket", "onesignin_sign_ins_total",
        "onesignin_second_factor_total", "onesignin_tokens_issued_total", "onesignin_db_pool_checked_out",
        "onesignin_outbox_lag_seconds", "onesignin_sync_deliveries_total", "onesignin_sync_delivery_latency_seconds_bucket",
        "onesignin_sync_dead_letters", "onesignin_sync_backlog", "onesignin_rights_requests_overdue",
    ):
        assert family in shown, family


def test_a_lost_key_or_a_wrong_type_is_caught(dashboard: dict[str, Any]) -> None:
    """The two checks above can fail: a panel key Grafana does not have, and a number where it
    has a string."""
    pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    bad = json.loads(json.dumps(dashboard))
    bad["panels"][1]["colour"] = "blue"
    bad["panels"][2]["title"] = 42
    model = Dashboard.from_json(bad)
    assert any(".colour: not in Grafana's model" in p for p in lost(bad, json.loads(json.dumps(model, cls=JSONEncoder)), "dashboard"))
    assert any("42 is not a str" in p for p in mistyped(model, Dashboard, "dashboard"))


# -- the alert rules ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_alert_rule_asks_about_metrics_the_hub_exports(rules: list[dict[str, Any]]) -> None:
    known = exported() | ELSEWHERE
    names_by_alert = {}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        names = metric_names(rule["expr"])
        assert names <= known, (rule["alert"], names - known)
        names_by_alert[rule["alert"]] = names
    assert len(names_by_alert) == len(rules), "alert names are unique"
    asked = set().union(*names_by_alert.values())
    # Sync lag, dead letters, the delivery failure rate, the 5xx rate and readiness are covered.
    assert {
        "onesignin_outbox_lag_seconds", "onesignin_sync_dead_letters", "onesignin_sync_deliveries_total",
        "onesignin_http_requests_total", "probe_success", "up",
    } <= asked


def test_a_metric_the_hub_does_not_export_is_caught() -> None:
    assert metric_names('sum(rate(onesignin_http_requests_total{status=~"5.."}[5m])) / sum(rate(onesignin_no_such[5m]))') - exported() == {
        "onesignin_no_such"
    }
    promql_parser = pytest.importorskip("promql_parser")
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(onesignin_http_requests_total[5m])")


def test_the_scrape_jobs_are_the_ones_the_rules_name(rules: list[dict[str, Any]]) -> None:
    yaml = pytest.importorskip("yaml")
    jobs = {job["job_name"] for job in yaml.safe_load(SCRAPE.read_text())["scrape_configs"]}
    assert jobs == {"onesignin-hub", "onesignin-relay", "onesignin-worker", "onesignin-readyz"}
    assert any('probe_success{job="onesignin-readyz"}' in rule["expr"] for rule in rules)
