"""The hub's one configuration object, read from ``ONESIGNIN_*`` environment variables.

Every value is validated when the process starts; a bad value stops it with one clear
line per problem. Development-only defaults (the generated secret key, the file mailer,
an ``http`` issuer) are allowed but reported once, as warnings, by :func:`development_warnings`.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from identity.private_files import create_once, private_dir, private_file

log = logging.getLogger(__name__)


class ConfigurationError(Exception):
    """The environment describes a configuration the hub cannot run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ONESIGNIN_", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Where the embedded database, keys and mail live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; sqlite+aiosqlite:///... or postgresql+asyncpg://..."
    )
    database_pool_size: int = Field(20, ge=1, le=500, description="Connections each process keeps to Postgres.")
    issuer: str = Field("http://127.0.0.1:8000", description="The OpenID Provider's issuer identifier.")
    secret_key: str | None = Field(
        None, description="Key for CSRF tokens and for encrypting signing keys at rest (>= 32 chars)."
    )

    # Lifetimes, in seconds.
    access_token_ttl: int = Field(3600, ge=60, le=86400)
    refresh_token_ttl: int = Field(30 * 86400, ge=3600)
    id_token_ttl: int = Field(3600, ge=60, le=86400)
    authorization_code_ttl: int = Field(60, ge=10, le=600)
    session_ttl: int = Field(14 * 86400, ge=300)
    session_idle_ttl: int = Field(2 * 86400, ge=300)
    interaction_ttl: int = Field(900, ge=60)

    # Signing keys: a key signs for rotation_days, is published key_publish_lead seconds before it signs.
    key_rotation_days: int = Field(90, ge=1)
    key_publish_lead: int = Field(86400, ge=0)

    # Reverse proxies whose X-Forwarded-For is believed (addresses or networks, JSON list).
    trusted_proxies: list[str] = Field(
        [], description='e.g. ["10.0.0.5", "172.16.0.0/12"]: the client address is then read from X-Forwarded-For.'
    )

    # A request's body must arrive within this many seconds (408 otherwise); handlers read it
    # whole before they touch the database.
    request_body_timeout: float = Field(10.0, gt=0, le=300)

    # Password checks (sign-in and every confirmation of a password): attempts allowed per typed
    # address (or known browser) and per client address before each further one waits, doubling
    # from the base wait up to the longest; a streak ends after a window without attempts.
    throttle_account_failures: int = Field(5, ge=1)
    throttle_address_failures: int = Field(30, ge=1)
    throttle_window: int = Field(900, ge=10)
    throttle_base_lockout: int = Field(30, ge=1)
    throttle_max_lockout: int = Field(3600, ge=1)
    # Requests that hash a password or send mail for anyone (registration, reset requests,
    # confirmation and guardian links): per client address and per typed address, per window.
    throttle_requests_per_address: int = Field(20, ge=1)
    throttle_requests_per_email: int = Field(5, ge=1)
    throttle_requests_window: int = Field(3600, ge=60)
    # Mail the hub sends on a visitor's request, per recipient and window (beyond it, none is sent).
    mail_per_recipient: int = Field(5, ge=1)
    mail_per_recipient_window: int = Field(3600, ge=60)
    # Password hashes waiting for a thread (argon2id, one per core); beyond it the hub answers 503.
    # Registrations, resets and password changes may fill half of it, so sign-ins keep room.
    hash_queue: int = Field(64, ge=1, le=10000)

    # Mail.
    mail_backend: Literal["file", "smtp"] = "file"
    mail_from: str = "OneSignIn <no-reply@onesignin.invalid>"
    mail_in_background: bool = Field(
        True,
        description="Send mail, and do the work a password reset request needs (the lookup, the link), after the "
        "response, so its timing reveals nothing (off: before it).",
    )
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False

    # Only accounts with a confirmed email address may sign in to member services.
    require_verified_email: bool = True

    # Children: under this age a guardian must consent.
    age_of_digital_consent: int = Field(16, ge=13, le=18)

    # The language of pages and mail when nothing about the person or their browser says one.
    default_locale: str = Field("en", description="Language used when no other choice applies (one of identity.i18n.LANGUAGES).")

    # New passwords are also looked up in Have I Been Pwned's Pwned Passwords (k-anonymity: only
    # five hex digits of the SHA-1 leave the hub); when it cannot answer, only the offline list counts.
    breached_password_api: bool = Field(False, description="Also check new passwords with the Pwned Passwords range API.")
    breached_password_api_url: str = Field(
        "https://api.pwnedpasswords.com/range/", description="The range endpoint; the hash prefix is appended."
    )
    breached_password_api_timeout: float = Field(2.0, gt=0, le=10, description="Seconds to wait for its answer before going on without it.")

    argon2_memory_cost: int = Field(19456, ge=8192)
    argon2_time_cost: int = Field(2, ge=1)
    argon2_parallelism: int = Field(1, ge=1)

    backchannel_logout_timeout: float = Field(5.0, gt=0)

    # Logs on stderr: plain text lines, or one JSON object a line for a log pipeline.
    log_format: Literal["text", "json"] = Field("text", description="text or json")
    # Lines are written in batches, at most this long after the first one waits (a warning or
    # worse at once, with everything before it); 0 writes every line at once.
    log_flush_seconds: float = Field(0.5, ge=0, le=60, description="Seconds a log line may wait to be written with others; 0: at once.")

    # OpenTelemetry tracing, off unless set (or the standard OTEL_EXPORTER_OTLP_ENDPOINT): an
    # OTLP/HTTP collector's base URL, e.g. http://otel-collector:4318 (identity/tracing.py).
    otel_exporter_otlp_endpoint: str | None = Field(None, description="OTLP/HTTP endpoint spans are exported to; unset: no tracing.")

    # /readyz: how long each check (the database's trivial query, a Kafka connection) may take.
    readiness_timeout: float = Field(2.0, gt=0, le=30, description="Seconds each /readyz check may take.")

    # `onesignin services rotate-secret`: how long the replaced client secret keeps working
    # beside the new one (the service deploys the new one meanwhile); --overlap overrides it.
    client_secret_overlap: int = Field(
        86400, ge=0, le=90 * 86400, description="Seconds a rotated-out client secret keeps working beside the new one."
    )

    # private_key_jwt services that publish their keys at a jwks_uri: fetched through the
    # outbound policy, kept this long, and fetched again sooner for an unknown key id (at most
    # once per refetch interval per service).
    jwks_uri_timeout: float = Field(5.0, gt=0, le=30, description="Seconds to wait for a service's jwks_uri.")
    jwks_uri_cache_ttl: int = Field(300, ge=0, description="Seconds a service's fetched JWK Set is used before it is fetched again.")
    jwks_uri_refetch_interval: float = Field(
        10.0, ge=0, description="Least seconds between two fetches of one service's jwks_uri for an unknown key id."
    )

    # Outbound calls to services' addresses (webhooks, back-channel logout) reach public internet
    # addresses only, and these networks (JSON list of CIDRs).
    outbound_allowed_networks: list[str] = Field(
        [],
        description='e.g. ["10.20.0.0/16"]: private networks that webhooks and back-channel logout may reach (loopback, private, link-local... are refused otherwise).',
    )

    # Kafka. Unset: `serve` starts an embedded, memory-only Kafka-compatible broker itself.
    kafka_bootstrap_servers: str | None = Field(None, description="host:port[,host:port]; unset runs the embedded broker.")
    kafka_enable_idempotence: bool = Field(
        True, description="Idempotent producer (Apache Kafka); the embedded broker does not support it and ignores this."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    # With SSL or SASL_SSL: the CA that signed the brokers' certificates (the system's CAs when
    # unset), and this client's certificate and key where the cluster authenticates clients by TLS.
    kafka_ssl_cafile: Path | None = Field(None, description="PEM file of the CA(s) the brokers' certificates are checked against.")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM client certificate (mutual TLS).")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of the client certificate.")
    kafka_topic_prefix: str = Field(
        "", pattern=r"^[A-Za-z0-9._-]{0,100}$", description="Put before every topic and group name (several hubs on one cluster)."
    )
    kafka_replication_factor: int = Field(1, ge=1, le=10, description="Replicas of topics the hub creates (3 on a production cluster).")
    kafka_profile_partitions: int = Field(12, ge=1, le=1000, description="Partitions of onesignin.profile.v1 when the hub creates it.")
    kafka_service_partitions: int = Field(3, ge=1, le=1000, description="Partitions of each service's own topic (on the embedded broker, the broker's own count).")
    kafka_session_timeout: float = Field(
        10.0,
        ge=1.0,
        le=300.0,
        description="Seconds a sync worker may go without a heartbeat before its group hands its partitions to the others "
        "(heartbeats every fifth of it). Apache Kafka refuses less than its group.min.session.timeout.ms (6 s by default); "
        "the embedded broker holds a joining member for half of it, so a shorter one starts a worker sooner.",
    )

    # Profile sync.
    sync_in_process: bool = Field(True, description="`serve` also runs the outbox relay and the sync worker.")
    sync_echo_suppression: bool = Field(True, description="A service is not sent the changes it made itself.")
    sync_retry_schedule: list[float] = Field(
        [5, 30, 120, 600, 1800, 7200, 21600, 43200, 86400],
        description="Seconds before each retry of a failed delivery (JSON list); the last repeats until sync_give_up_after.",
    )
    sync_give_up_after: float = Field(3 * 86400, gt=0, description="A delivery failing this long goes to the dead-letter list.")
    sync_quarantine_after: float = Field(3600, gt=0, description="A webhook failing this long is quarantined (slowed, flagged).")
    sync_quarantine_probe: float = Field(300, gt=0, description="Seconds between tries to a quarantined webhook.")
    sync_concurrency: int = Field(256, ge=1, le=10000, description="Deliveries in flight per worker process.")
    sync_service_concurrency: int = Field(64, ge=1, le=10000, description="Deliveries in flight to one service per worker.")
    sync_resync_rate: float = Field(200, gt=0, description="People per second a resync replays to one service.")
    webhook_timeout: float = Field(10.0, gt=0, le=60)
    sync_lease: float = Field(
        30.0, gt=0, description="Seconds a worker holds deliveries it took; after a crash, others take them over then."
    )
    relay_batch_size: int = Field(500, ge=1, le=10000)
    relay_poll_interval: float = Field(0.05, gt=0, le=10, description="Seconds the relay waits when the outbox is empty.")
    outbox_retention: int = Field(7 * 86400, ge=0, description="Seconds published outbox rows are kept.")

    # Retention (days), applied by `onesignin purge` and by `serve` every purge_interval seconds.
    sign_in_retention_days: int = Field(365, ge=1, description="Days sign-in history is kept.")
    change_retention_days: int = Field(730, ge=1, description="Days the history of changes to basic details is kept.")
    notice_retention_days: int = Field(30, ge=1, description="Days delivered (or given-up) service notices are kept.")
    ssf_poll_retention_days: int = Field(
        14, ge=1, description="Days a Shared Signals event waits for the service to poll and acknowledge it before it is dropped."
    )
    ssf_poll_wait: float = Field(
        10.0, ge=0, le=60, description="Seconds a Shared Signals poll with returnImmediately false waits for an event."
    )
    audit_retention_days: int = Field(2190, ge=1, description="Days audit records are kept.")
    rights_request_retention_days: int = Field(
        1095, ge=1, description="Days a closed rights request is kept (to show it was answered), then deleted."
    )
    child_grace_days: int = Field(
        30, ge=1, description="Days a child's account without a guardian's consent is kept, restricted, before it is deleted."
    )
    unverified_retention_days: int = Field(
        30,
        ge=1,
        description="Days an account whose address was never confirmed is kept without use (no sign-in, no live "
        "mailed link) before it is deleted; never one linked to a service or holding anything else of the person's.",
    )
    sync_rollup_retention_days: int = Field(
        8, ge=1, description="Days the per-minute sync rollups behind the console's charts are kept (the charts show at most a day)."
    )
    purge_interval: float = Field(3600, gt=0, description="Seconds between purges run by `serve`.")

    # Prometheus metrics of `serve`: on a port of their own, never on the public one.
    metrics_host: str = Field(
        "127.0.0.1", description="Address `serve` answers /metrics on (loopback: only this machine can scrape it)."
    )
    metrics_port: int = Field(9102, ge=0, le=65535, description="Port `serve` answers /metrics on (0: any free port).")

    # Support console.
    console_idle_ttl: int = Field(900, ge=60, le=86400, description="Seconds of inactivity that end a console session.")
    console_session_ttl: int = Field(8 * 3600, ge=300, le=7 * 86400, description="Longest life of a console session.")

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL, e.g. https://id.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment (OpenID Connect Discovery 1.0, section 3)")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("must use https unless it is a loopback address")
        return value.rstrip("/")

    @field_validator("default_locale")
    @classmethod
    def _known_language(cls, value: str) -> str:
        from identity.i18n import LANGUAGES

        if value not in LANGUAGES:
            raise ValueError(f"must be one of {', '.join(LANGUAGES)}")
        return value

    @field_validator("breached_password_api_url")
    @classmethod
    def _range_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("must be an absolute http(s) URL without query or fragment, e.g. https://api.pwnedpasswords.com/range/")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("must use https unless it is a loopback address")
        return value.rstrip("/") + "/"

    @field_validator("trusted_proxies", "outbound_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return [item.strip() for item in value]

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies)

    @property
    def outbound_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.outbound_allowed_networks)

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not (value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (or postgresql://)")
        return value

    @field_validator("secret_key")
    @classmethod
    def _long_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("must be at least 32 characters; generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.throttle_max_lockout < self.throttle_base_lockout:
            raise ValueError("ONESIGNIN_THROTTLE_MAX_LOCKOUT must be >= ONESIGNIN_THROTTLE_BASE_LOCKOUT")
        if self.sync_lease <= self.webhook_timeout:
            raise ValueError("ONESIGNIN_SYNC_LEASE must be longer than ONESIGNIN_WEBHOOK_TIMEOUT")
        if not self.sync_retry_schedule or any(x <= 0 for x in self.sync_retry_schedule):
            raise ValueError("ONESIGNIN_SYNC_RETRY_SCHEDULE must be a non-empty JSON list of positive seconds")
        if (self.kafka_ssl_cafile or self.kafka_ssl_certfile) and self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError("ONESIGNIN_KAFKA_SSL_CAFILE and _CERTFILE need ONESIGNIN_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL")
        if self.kafka_sasl_mechanism and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError("ONESIGNIN_KAFKA_SASL_MECHANISM needs ONESIGNIN_KAFKA_SASL_USERNAME and ONESIGNIN_KAFKA_SASL_PASSWORD")
        if self.mail_backend == "smtp" and self.smtp_username and not (self.smtp_starttls or self.smtp_tls):
            raise ValueError("ONESIGNIN_SMTP_USERNAME needs ONESIGNIN_SMTP_STARTTLS or ONESIGNIN_SMTP_TLS: credentials are never sent in clear")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'onesignin.db').resolve()}"

    @property
    def is_embedded(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def secure_cookies(self) -> bool:
        return self.issuer.startswith("https://")

    def resolved_secret_key(self) -> str:
        """The configured secret key, or one generated once and kept in the data dir."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret.key"
        if not path.exists():
            # Written whole with mode 0600 before it has its name; of processes starting
            # together, the first to link it wins and the others read that one.
            create_once(private_dir(self.data_dir) / "secret.key", secrets.token_urlsafe(48).encode())
        else:
            private_file(path)  # a key left readable by an older version
        return path.read_text().strip()


def load_settings(**overrides: object) -> Settings:
    """Read and validate the environment; raise ConfigurationError with one line per problem."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "ONESIGNIN_" + "_".join(str(p) for p in error["loc"]).upper() if error["loc"] else "configuration"
            lines.append(f"{name}: {error['msg']}")
        raise ConfigurationError("\n".join(lines)) from None


def development_warnings(settings: Settings) -> list[str]:
    """The development-only defaults a production deployment must change."""
    warnings = []
    if not settings.secret_key:
        warnings.append("ONESIGNIN_SECRET_KEY is unset: using a key generated in the data dir (fine for one machine only).")
    if settings.mail_backend == "file":
        warnings.append(f"Mail is written to {settings.data_dir / 'mail'} instead of being sent (ONESIGNIN_MAIL_BACKEND=file).")
    if not settings.issuer.startswith("https://"):
        warnings.append("The issuer is plain http on loopback: development only.")
    if settings.kafka_bootstrap_servers is None:
        warnings.append("ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS is unset: using an embedded, memory-only broker (development only).")
    if settings.is_embedded:
        warnings.append("Using the embedded SQLite database; set ONESIGNIN_DATABASE_URL to Postgres for production.")
    return warnings
