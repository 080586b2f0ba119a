"""``compose.yaml`` and the ``Dockerfile`` describe the scaled-out deployment with real commands and
real settings: every OneSignIn service runs a command the CLI accepts, every ``ONESIGNIN_*``
variable is a setting the hub reads, and no secret is written into the file. The demo member
services, Store and Forum, run against that topology. (Parsing needs PyYAML; without it those
checks are skipped.)"""

from __future__ import annotations

import ipaddress
import json
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
#: The processes of the hub, and the demo member services.
HUB_SERVICES = ("migrate", "hub", "relay", "worker")
DEMO_SERVICES = ("store", "forum")


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
    # The demo member services run against this topology, not beside a hub of their own.
    assert set(DEMO_SERVICES) <= set(ours(services))
    assert "demo" not in services
    for name in DEMO_SERVICES:
        assert "profiles" not in services[name] and "deploy" not in services[name], name
        assert services[name]["build"]["target"] == "demo", name


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
    assert hub.workers == 2  # each replica: two processes on its port, the first serving /metrics
    for name in ("relay", "worker"):
        assert (commands[name].command, commands[name].host) == (name, "0.0.0.0")
    # Each health check asks the port the process listens on.
    for name in ("hub", "relay", "worker"):
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{commands[name].port}/healthz" in check, (name, check)


def test_metrics_stay_on_the_private_network(services: dict[str, dict[str, Any]]) -> None:
    """Every process's /metrics (they name every service's client_id) is on a port of its own,
    reachable on the compose network and published nowhere; the proxy forwards only the hub's
    public port."""
    hub = parser().parse_args(services["hub"]["command"])
    assert (hub.metrics_host, hub.metrics_port) == ("0.0.0.0", 9102) and hub.metrics_port != hub.port
    metrics_ports = {str(hub.metrics_port), "9100", "9101"}
    for name, service in services.items():
        published = {str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])}
        assert not published & metrics_ports, name
    proxy = shlex.split(" ".join(services["proxy"]["command"]))
    assert proxy[proxy.index("--to") + 1] == f"hub:{hub.port}"


def test_the_demo_services_run_against_the_topology(services: dict[str, dict[str, Any]]) -> None:
    proxy = shlex.split(" ".join(services["proxy"]["command"]))
    proxy_port = proxy[proxy.index("--from") + 1].rsplit(":", 1)[1]
    for name in DEMO_SERVICES:
        service = services[name]
        args = parser().parse_args(service["command"])
        assert (args.command, args.services_only, args.only, args.host) == ("demo", True, name, "0.0.0.0"), name
        port = getattr(args, f"{name}_port")
        assert port is not None, name
        # They call the hub through the proxy (the issuer, 127.0.0.1, is the host's, not theirs).
        assert args.hub_url == f"http://proxy:{proxy_port}", (name, args.hub_url)
        # The workers reach their webhooks by the service's name on the compose network.
        assert getattr(args, f"{name}_webhook_base") == f"http://{name}:{port}" and args.allow_http_webhooks, name
        # Published on the host's loopback only, at the port it listens on (its redirect URI).
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"], name
        check = service["healthcheck"]
        assert check["test"][:2] == ["CMD", "python"] and f"http://127.0.0.1:{port}/healthz" in " ".join(check["test"]), name
        assert {"interval", "timeout", "retries"} <= set(check), name
    # One registration for both: they share the data dir (the image's ONESIGNIN_DATA_DIR).
    data_dir = re.search(r"^ENV ONESIGNIN_DATA_DIR=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert data_dir
    mounts = {name: services[name]["volumes"] for name in DEMO_SERVICES}
    assert mounts["store"] == mounts["forum"] and mounts["store"][0].endswith(":" + data_dir.group(1))
    # And their own ports differ from each other and from the proxy's.
    ports = {getattr(parser().parse_args(services[n]["command"]), f"{n}_port") for n in DEMO_SERVICES}
    assert len(ports) == 2 and int(proxy_port) not in ports


def test_the_hub_settings_are_real_and_hold_no_secret(services: dict[str, dict[str, Any]]) -> None:
    fields = set(Settings.model_fields)
    for name in HUB_SERVICES + DEMO_SERVICES:
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


def test_the_workers_may_reach_the_demo_services_on_the_compose_network_only(services: dict[str, dict[str, Any]]) -> None:
    yaml = pytest.importorskip("yaml")
    (subnet,) = (ipaddress.ip_network(c["subnet"]) for c in yaml.safe_load(COMPOSE.read_text())["networks"]["default"]["ipam"]["config"])
    # Outbound calls (webhooks from the workers, back-channel logout from the hub) reach public
    # addresses only, and the networks this setting allows: here the compose network, where the
    # workers deliver to http://store:8101 and http://forum:8102, and nothing wider.
    for name in ("hub", "worker"):
        settings = Settings(
            secret_key="s" * 40,
            outbound_allowed_networks=json.loads(services[name]["environment"]["ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS"]),
        )
        assert settings.outbound_networks == (subnet,), name


def test_services_start_in_order(services: dict[str, dict[str, Any]]) -> None:
    def condition(name: str, on: str) -> str:
        return services[name]["depends_on"][on]["condition"]

    assert condition("migrate", "postgres") == "service_healthy"
    for name in ("hub", "relay", "worker"):
        assert condition(name, "migrate") == "service_completed_successfully"
    for name in ("relay", "worker"):
        assert condition(name, "kafka") == "service_healthy"
    for name in DEMO_SERVICES:
        assert condition(name, "migrate") == "service_completed_successfully"
        assert condition(name, "hub") == "service_healthy"
        assert condition(name, "kafka") == "service_healthy"
        assert condition(name, "proxy") == "service_started"
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


def test_mail_goes_to_mailpit_where_a_person_reads_it(services: dict[str, dict[str, Any]]) -> None:
    """The hub sends its mail (confirmation links, resets) over SMTP to Mailpit, a mail catcher
    whose web page on the host's loopback shows it: a person can complete a registration."""
    mailpit = services["mailpit"]
    assert re.fullmatch(r"axllent/mailpit:v\d+\.\d+(\.\d+)?", mailpit["image"])
    # Its web page on the host's loopback; its SMTP port on the compose network only.
    assert mailpit["ports"] == ["127.0.0.1:8025:8025"]
    assert mailpit["healthcheck"]["test"] == ["CMD", "/mailpit", "readyz"]
    for name in HUB_SERVICES + DEMO_SERVICES:
        env = services[name]["environment"]
        settings = Settings(
            secret_key="s" * 40,
            mail_backend=env["ONESIGNIN_MAIL_BACKEND"],
            smtp_host=env["ONESIGNIN_SMTP_HOST"],
            smtp_port=int(env["ONESIGNIN_SMTP_PORT"]),
            mail_from=env["ONESIGNIN_MAIL_FROM"],
        )
        assert (settings.mail_backend, settings.smtp_host, settings.smtp_port) == ("smtp", "mailpit", 1025), name
        assert not (settings.smtp_starttls or settings.smtp_tls or settings.smtp_username), name  # Mailpit takes plain SMTP
    assert services["hub"]["depends_on"]["mailpit"]["condition"] == "service_healthy"
