"""The hub's one configuration object, read from ``ONESIGNIN_*`` environment variables.

Every value is validated when the process starts; a bad value stops it with one clear
line per problem. Development-only defaults (the generated secret key, the file mailer,
an ``http`` issuer) are allowed but reported once, as warnings, by :func:`development_warnings`.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    # Sign-in throttling.
    throttle_account_failures: int = Field(5, ge=1)
    throttle_address_failures: int = Field(30, ge=1)
    throttle_window: int = Field(900, ge=10)
    throttle_base_lockout: int = Field(30, ge=1)
    throttle_max_lockout: int = Field(3600, ge=1)

    # Mail.
    mail_backend: Literal["file", "smtp"] = "file"
    mail_from: str = "OneSignIn <no-reply@onesignin.invalid>"
    mail_in_background: bool = Field(
        True, description="Send mail after the response, so its timing reveals nothing (off: before it)."
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

    argon2_memory_cost: int = Field(19456, ge=8192)
    argon2_time_cost: int = Field(2, ge=1)
    argon2_parallelism: int = Field(1, ge=1)

    backchannel_logout_timeout: float = Field(5.0, gt=0)

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
    def _consistent(self) -> "Settings":
        if self.throttle_max_lockout < self.throttle_base_lockout:
            raise ValueError("ONESIGNIN_THROTTLE_MAX_LOCKOUT must be >= ONESIGNIN_THROTTLE_BASE_LOCKOUT")
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
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key)
        tmp.chmod(0o600)
        try:
            tmp.rename(path) if not path.exists() else tmp.unlink()
        except FileExistsError:  # pragma: no cover - another process won the race
            tmp.unlink(missing_ok=True)
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
    if settings.is_embedded:
        warnings.append("Using the embedded SQLite database; set ONESIGNIN_DATABASE_URL to Postgres for production.")
    return warnings
