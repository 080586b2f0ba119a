"""``compose.yaml`` and the ``Dockerfile`` describe the scaled-out deployment with real commands and
real settings: every OneSignIn service runs a command the CLI accepts, every ``ONESIGNIN_*``
variable is a setting the hub reads, and no secret is written into the file. (Parsing needs
PyYAML; without it those checks are skipped.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from identity.cli import parser
from identity.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load(COMPOSE.read_text())
    return document["services"]


def ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile (their entrypoint is ``onesignin``)."""
    return {name: s for name, s in services.items() if isinstance(s.get("build"), dict) and s["build"].get("context") == "."}


def test_the_topology(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "kafka", "migrate", "hub", "relay", "worker"} <= set(services)
    assert services["postgres"]["image"] == "postgres:17"
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])
    for name in ("hub", "relay", "worker"):
        assert services[name]["deploy"]["replicas"] == 2, name
    assert "deploy" not in services["migrate"] and services["migrate"]["restart"] == "no"
    assert {"migrate", "hub", "relay", "worker"} <= set(ours(services))


def test_every_onesignin_service_runs_a_real_command(services: dict[str, dict[str, Any]]) -> None:
    commands = {}
    for name, service in ours(services).items():
        try:
            commands[name] = parser().parse_args(service["command"])
        except SystemExit:
            pytest.fail(f"{name}: `onesignin {' '.join(service['command'])}` is not a command the CLI accepts")
    assert commands["migrate"].command == "migrate"
    hub = commands["hub"]
    assert (hub.command, hub.host, hub.port, hub.no_sync) == ("serve", "0.0.0.0", 8000, True)
    for name in ("relay", "worker"):
        assert (commands[name].command, commands[name].host) == (name, "0.0.0.0")
    # Each health check asks the port the process listens on.
    for name in ("hub", "relay", "worker"):
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{commands[name].port}/healthz" in check, (name, check)
    if "demo" in commands:
        assert commands["demo"].command == "demo" and "demo" in services["demo"]["profiles"]


def test_the_hub_settings_are_real_and_hold_no_secret(services: dict[str, dict[str, Any]]) -> None:
    fields = set(Settings.model_fields)
    for name in ("migrate", "hub", "relay", "worker"):
        env = services[name]["environment"]
        for variable in env:
            if variable.startswith("ONESIGNIN_"):
                assert variable.removeprefix("ONESIGNIN_").lower() in fields, f"{name}: {variable} is not a setting"
        url = env["ONESIGNIN_DATABASE_URL"]
        assert re.fullmatch(r"postgresql\+asyncpg://onesignin:\$\{POSTGRES_PASSWORD:\?[^}]+\}@postgres:5432/onesignin", url), url
        assert env["ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert re.fullmatch(r"\$\{ONESIGNIN_SECRET_KEY:\?[^}]+\}", env["ONESIGNIN_SECRET_KEY"])
        assert "ONESIGNIN_ISSUER" in env
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", services["postgres"]["environment"]["POSTGRES_PASSWORD"])


def test_services_start_in_order(services: dict[str, dict[str, Any]]) -> None:
    def condition(name: str, on: str) -> str:
        return services[name]["depends_on"][on]["condition"]

    assert condition("migrate", "postgres") == "service_healthy"
    for name in ("hub", "relay", "worker"):
        assert condition(name, "migrate") == "service_completed_successfully"
    for name in ("relay", "worker"):
        assert condition(name, "kafka") == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])


def test_kafka_is_a_consistent_single_node_kraft_cluster(services: dict[str, dict[str, Any]]) -> None:
    env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    node = env["KAFKA_NODE_ID"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {entry.split("://")[0]: entry.split("://")[1] for entry in env["KAFKA_LISTENERS"].split(",")}
    advertised = {entry.split("://")[0]: entry.split("://")[1] for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    voter_id, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert voter_id == node and voter.endswith(listeners[controller])
    # The OneSignIn processes reach the broker where it says it is.
    assert advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == services["hub"]["environment"]["ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS"]
    for name in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[name] == "1", name


def test_the_image_runs_onesignin_as_an_unprivileged_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    assert 'ENTRYPOINT ["onesignin"]' in lines
    assert any(re.match(r"RUN pip install \.( |$)", line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] != "root"
    stages = {line.split()[-1] for line in lines if line.startswith("FROM ") and " AS " in line}
    assert {"hub", "demo"} <= stages
    # The default target (the last stage) is the hub image.
    assert shlex.split([line for line in lines if line.startswith("FROM ")][-1])[-1] == "hub"
