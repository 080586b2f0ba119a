"""The hub's tables. Data functions take an ``AsyncSession`` and never commit: the caller
owns the unit of work. Relationships are ``lazy="raise"``; load what you need explicitly."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    false,
    func,
    literal_column,
    text,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class AccountStatus(StrEnum):
    """Where an account stands (stored as these strings)."""

    ACTIVE = "active"
    #: A child's account whose guardian has not consented yet: shared with no service meanwhile.
    PENDING_GUARDIAN = "pending_guardian"


class LinkStatus(StrEnum):
    """Where a link between a person and a service stands (stored as these strings)."""

    ACTIVE = "active"
    #: The person unlinked the service at the hub (the service keeps its account).
    REVOKED = "revoked"
    #: The service reported that it cancelled its own account for the person.
    CANCELLED = "cancelled"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Account(Base):
    """A person's hub account: sign-in details and the basic account details (OIDC claim names)."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sub: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str] = mapped_column(String(255))
    given_name: Mapped[str | None] = mapped_column(String(200))
    family_name: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(400))
    birthdate: Mapped[dt.date | None] = mapped_column(Date)
    locale: Mapped[str | None] = mapped_column(String(35))
    zoneinfo: Mapped[str | None] = mapped_column(String(64))
    phone_number: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    marketing_news: Mapped[bool] = mapped_column(Boolean, default=False)
    marketing_news_at: Mapped[dt.datetime | None]
    marketing_competitions: Mapped[bool] = mapped_column(Boolean, default=False)
    marketing_competitions_at: Mapped[dt.datetime | None]
    marketing_offers: Mapped[bool] = mapped_column(Boolean, default=False)
    marketing_offers_at: Mapped[dt.datetime | None]
    # An AccountStatus: "active", or "pending_guardian" for a child whose guardian has not yet
    # consented (the account is not shared with any service meanwhile; see ``restricted_at``).
    status: Mapped[str] = mapped_column(String(32), default=AccountStatus.ACTIVE.value)

    @hybrid_property
    def may_be_shared(self) -> bool:
        """Whether services may have the account: sign the person in, receive their claims and
        changes. Not while a child waits for a guardian's consent. Also a query condition
        (``where(Account.may_be_shared)``)."""
        return self.status == AccountStatus.ACTIVE.value

    guardian_email: Mapped[str | None] = mapped_column(String(320))
    guardian_consent_at: Mapped[dt.datetime | None]
    # When sharing with services stopped because the account turned out to be a child's
    # without a guardian's consent, and when it is deleted unless a guardian confirms.
    restricted_at: Mapped[dt.datetime | None]
    #: An operator disabled the account (``onesignin users disable``): it cannot sign in.
    disabled_at: Mapped[dt.datetime | None]
    delete_after: Mapped[dt.datetime | None] = mapped_column(index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    # The support console's search (identity.support.search): prefixes in byte order, each
    # key in the order results are listed. ``text_pattern_ops`` makes them prefix ranges on
    # Postgres whatever the database's collation; SQLite gets plain indexes.
    __table_args__ = (
        Index("ix_accounts_email_prefix", email, postgresql_ops={"email": "text_pattern_ops"}),
        Index(
            "ix_accounts_phone_number",
            phone_number,
            id,
            postgresql_ops={"phone_number": "text_pattern_ops"},
        ),
        Index(
            "ix_accounts_family_given",
            func.lower(family_name).label("family_lower"),
            func.lower(given_name).label("given_lower"),
            id,
            postgresql_ops={"family_lower": "text_pattern_ops", "given_lower": "text_pattern_ops"},
        ),
        Index(
            "ix_accounts_given_family",
            func.lower(given_name).label("given_lower"),
            func.lower(family_name).label("family_lower"),
            id,
            postgresql_ops={"given_lower": "text_pattern_ops", "family_lower": "text_pattern_ops"},
        ),
        # The retention purge's unconfirmed accounts (identity.purge.unverified): few rows.
        Index(
            "ix_accounts_unverified",
            created_at,
            postgresql_where=text("email_verified = false"),
            sqlite_where=text("email_verified = 0"),
        ),
    )


class AccountChange(Base):
    """One change of basic account details: which claims, when, through which channel."""

    __tablename__ = "account_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    fields: Mapped[list[str]] = mapped_column(JSON)
    # "person", "service", "support", "cli"
    channel: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class SignInEvent(Base):
    """Sign-in history, kept for the person's own view and export."""

    __tablename__ = "sign_in_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    address: Mapped[str | None] = mapped_column(String(64))
    succeeded: Mapped[bool] = mapped_column(Boolean)


class EmailToken(Base):
    """A single-use link sent by mail: email verification, password reset, guardian consent."""

    __tablename__ = "email_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class Service(Base):
    """A member service: an OAuth 2 / OpenID Connect client of the hub."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    #: None for a service that holds no secret (a public client, or one using private_key_jwt).
    secret_hash: Mapped[str | None] = mapped_column(String(128))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(500))
    grant_types: Mapped[list[str]] = mapped_column(JSON)
    id_token_signed_response_alg: Mapped[str] = mapped_column(String(16), default="RS256")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Profile sync: a Standard Webhooks endpoint (secret encrypted at rest) and/or the
    # service's own Kafka topic.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    topic_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The webhook's health: failing since, quarantined (slowed) since, disabled (410 Gone).
    webhook_failing_since: Mapped[dt.datetime | None]
    webhook_quarantined_at: Mapped[dt.datetime | None]
    webhook_disabled_at: Mapped[dt.datetime | None]
    webhook_last_error: Mapped[str | None] = mapped_column(String(500))
    # Profile sync to the service's SCIM 2.0 server (RFC 7644): its base URL, and the bearer
    # token the hub presents there (sealed, like the webhook secret), or, with a token URL, the
    # OAuth client (id, and secret sealed in ``scim_token``) the hub gets its tokens as
    # (client credentials grant); the endpoint's health as the webhook's (a SCIM server is not
    # disabled by a 410: it has no such answer).
    scim_base_url: Mapped[str | None] = mapped_column(String(2000))
    scim_token: Mapped[str | None] = mapped_column(Text)
    scim_token_url: Mapped[str | None] = mapped_column(String(2000))
    scim_client_id: Mapped[str | None] = mapped_column(String(255))
    scim_failing_since: Mapped[dt.datetime | None]
    scim_quarantined_at: Mapped[dt.datetime | None]
    scim_last_error: Mapped[str | None] = mapped_column(String(500))
    # A first-party client run by the hub's operators (the support console): no consent screen.
    first_party: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How a person cancels their account at this service (the hub never does it for them).
    cancellation_url: Mapped[str | None] = mapped_column(String(2000))
    cancellation_instructions: Mapped[str | None] = mapped_column(Text)
    # How the service authenticates to the token, revocation and introspection endpoints
    # (``identity.oidc.client.AuthMethod``), what kind of client it is (``web`` or ``native``,
    # RFC 8252), and for private_key_jwt its public keys: a JWK Set or where to fetch one.
    token_endpoint_auth_method: Mapped[str] = mapped_column(
        String(32), default="client_secret_basic", server_default="client_secret_basic"
    )
    application_type: Mapped[str] = mapped_column(String(16), default="web", server_default="web")
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    #: Authorization requests must be pushed first (RFC 9126 section 6).
    require_par: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Tokens only bound to a key with DPoP (RFC 9449).
    require_dpop: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Authorization requests only as signed request objects (RFC 9101 section 10.5).
    require_signed_request_object: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: An operator disabled the service (``onesignin services disable``): no sign-ins, no tokens.
    disabled_at: Mapped[dt.datetime | None]
    #: The secret before the last rotation, accepted until ``previous_secret_expires_at``.
    previous_secret_hash: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[dt.datetime | None]
    #: When the current client secret and webhook secret were made (their age, for admins).
    secret_set_at: Mapped[dt.datetime | None]
    webhook_secret_set_at: Mapped[dt.datetime | None]


class PushedRequest(Base):
    """An authorization request a service pushed (RFC 9126), until /authorize uses it (once)
    or it expires."""

    __tablename__ = "pushed_requests"

    #: SHA-256 of the random part of its request_uri.
    request_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    #: The authorization request's parameters, as [name, value] pairs.
    params: Mapped[list[list[str]]] = mapped_column(JSON)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class ClientAssertion(Base):
    """A client assertion (RFC 7523) already used, remembered until it expires so that it is
    accepted once, by whichever hub process sees it first."""

    __tablename__ = "client_assertions"

    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    #: SHA-256 of the assertion's ``jti`` (any length and characters the client chose).
    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class Consent(Base):
    """Scopes a person approved for a service, remembered until revoked."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("account_id", "service_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(500))
    granted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class Link(Base):
    """A linked account: the person signed in to the service at least once.

    ``status`` is ``active``; ``revoked`` when the person unlinked the service at the hub (the
    service keeps its account); or ``cancelled`` when the service reported that it cancelled its
    own account. Signing in to the service again makes the link active again."""

    __tablename__ = "links"
    __table_args__ = (UniqueConstraint("account_id", "service_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=LinkStatus.ACTIVE.value)  # a LinkStatus

    @hybrid_property
    def is_active(self) -> bool:
        """Whether the link is live (neither revoked nor cancelled): the service hears of the
        person. Also a query condition (``where(Link.is_active)``)."""
        return self.status == LinkStatus.ACTIVE.value

    scope: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When the link last stopped being active (revoked or cancelled).
    ended_at: Mapped[dt.datetime | None]
    # The service's SCIM ``id`` of the person's User, once its SCIM server made one.
    scim_id: Mapped[str | None] = mapped_column(String(255))


class BrowserSession(Base):
    """A person's single-sign-on session at the hub. The cookie holds a secret whose hash is
    stored; ``sid`` is the public session id put in ID and logout tokens."""

    __tablename__ = "browser_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sid: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    auth_time: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    #: How the person proved who they are (RFC 8176 values, space-separated): ``pwd``, or
    #: ``pwd otp`` once the second factor was given too.
    amr: Mapped[str] = mapped_column(String(32), default="pwd", server_default="pwd")
    #: The browser's User-Agent at sign-in (cut to 300 characters), to name it in the person's
    #: list of where they are signed in.
    user_agent: Mapped[str | None] = mapped_column(String(300))


class SecondFactor(Base):
    """A person's TOTP second factor (RFC 6238; staff have theirs in ``staff``). The secret is
    sealed for this account; ``confirmed_at`` is unset while the person is still setting it up
    (until a first right code), and only a confirmed factor is asked for at sign-in.
    ``last_step`` refuses a code already used in its window. ``recovery_codes`` holds the
    digests of the single-use recovery codes not yet used (JSON list)."""

    __tablename__ = "second_factors"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), unique=True)
    totp_secret: Mapped[str] = mapped_column(Text)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    recovery_codes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[dt.datetime | None]


class Passkey(Base):
    """A person's passkey (a WebAuthn discoverable credential): nothing secret, only what checks
    its signatures. ``credential_id`` and ``user_handle`` are base64url; ``public_key`` is the
    COSE key. ``sign_count`` is the authenticator's counter last seen (0 for authenticators that
    keep none). ``backup_eligible`` (the BE flag, fixed at creation) tells a synced passkey
    (``swk`` in ``amr``) from one bound to its device (``hwk``). ``name`` is the person's."""

    __tablename__ = "passkeys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)
    user_handle: Mapped[str] = mapped_column(String(100))
    public_key: Mapped[str] = mapped_column(Text)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[list[str]] = mapped_column(JSON, default=list)
    backup_eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    aaguid: Mapped[str] = mapped_column(String(36), default="")
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]


class SpentChallenge(Base):
    """A WebAuthn challenge already answered, remembered until it would have expired anyway, so
    that each is accepted once (the challenge itself travels sealed in the browser's cookie)."""

    __tablename__ = "spent_challenges"

    #: SHA-256 of the challenge.
    challenge_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class SessionService(Base):
    """Services a browser session has signed in to (for back-channel logout)."""

    __tablename__ = "session_services"
    __table_args__ = (UniqueConstraint("session_id", "service_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("browser_sessions.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))


class Interaction(Base):
    """A pending authorization request waiting for the person to sign in or consent."""

    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid_hash: Mapped[str] = mapped_column(String(64), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class AuthorizationCode(Base):
    __tablename__ = "authorization_codes"
    __table_args__ = (Index("ix_authorization_codes_nonce", "service_id", "nonce"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(500))
    nonce: Mapped[str | None] = mapped_column(String(255))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8))
    auth_time: Mapped[dt.datetime]
    sid: Mapped[str | None] = mapped_column(String(64))
    #: The session's methods when the code was issued (``BrowserSession.amr``), for the ID token.
    amr: Mapped[str] = mapped_column(String(32), default="pwd", server_default="pwd")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]
    grant_id: Mapped[str | None] = mapped_column(String(64))
    #: The DPoP key the code may be exchanged with (RFC 9449 section 10: ``dpop_jkt``).
    dpop_jkt: Mapped[str | None] = mapped_column(String(64))


class DPoPProof(Base):
    """A DPoP proof (RFC 9449) already used, remembered while its ``iat`` is still accepted, so
    that it is accepted once, by whichever hub process sees it first."""

    __tablename__ = "dpop_proofs"

    #: SHA-256 of the proof key's thumbprint and the proof's ``jti``.
    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class Token(Base):
    """An access token and, for user grants, its refresh token. Tokens of one grant share a
    ``grant_id`` (the refresh-token family): reuse of a rotated refresh token or a replayed
    code revokes the whole family."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    grant_id: Mapped[str] = mapped_column(String(64), index=True)
    access_hash: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(500))
    # What the person granted: a refresh asking for less narrows only that access token.
    grant_scope: Mapped[str] = mapped_column(String(500))
    sid: Mapped[str | None] = mapped_column(String(64), index=True)
    auth_time: Mapped[dt.datetime | None]
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    access_expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    refresh_expires_at: Mapped[dt.datetime | None]
    refresh_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    #: DPoP (RFC 9449): the thumbprint of the key the access token is bound to (``cnf.jkt``);
    #: a public client's refresh token is bound to it too.
    dpop_jkt: Mapped[str | None] = mapped_column(String(64))


class RevokedServiceToken(Base):
    """A revoked client_credentials token (those tokens are self-contained), kept until it expires."""

    __tablename__ = "revoked_service_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class SigningKey(Base):
    """A JWS signing key. The private JWK is encrypted with the hub's secret key."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    private_jwk: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    signs_from: Mapped[dt.datetime]
    signs_until: Mapped[dt.datetime]
    published_until: Mapped[dt.datetime]


class Throttle(Base):
    """Attempts counted against one key (``identity.accounts.throttle``): a typed email, a client
    address, a known browser, the work of registration, resets and mail."""

    __tablename__ = "throttles"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: Attempts in the current streak.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    #: When the streak's latest counted attempt was made.
    window_start: Mapped[dt.datetime]
    #: The next attempt waits until then.
    locked_until: Mapped[dt.datetime | None]
    lockouts: Mapped[int] = mapped_column(Integer, default=0)
    #: Whether the latest attempt was refused (what the counting statement returns).
    refused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class OutboxEvent(Base):
    """An event written in the same transaction as the change it describes; the relay
    publishes rows in ``id`` order and marks them published."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(249))
    key: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    # When the sync worker recorded what the event calls for (an embedded, memory-only broker
    # loses what was published but not consumed; those events are published again).
    consumed_at: Mapped[dt.datetime | None]
    # The id of the request that made the change (its access log line's), if a request did.
    request_id: Mapped[str | None] = mapped_column(String(128))


#: Row states as SQL literals, not bound parameters. A query filtering on them is matched to the
#: partial indexes below (``ix_deliveries_due``, ``ix_notices_due``) in every plan, including the
#: generic plans Postgres keeps for prepared statements: with ``state = $1`` such a plan cannot
#: use the index and scans and sorts the whole table instead.
ACTIVE = literal_column("'active'")
PENDING = literal_column("'pending'")


class Delivery(Base):
    """What one service should know about one person, through one channel (its webhook or its
    topic), and what it was last sent. Deliveries are state-based: a newer change for the same
    person and service supersedes a pending one (``wanted_version`` rises; ``changed`` is a
    bitmask of claim names, OR-ed together), and each delivery carries the full current profile.
    A delivery is due when ``wanted_version > delivered_version`` and ``next_attempt_at`` has come."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("service_id", "account_id", "channel"),
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("state = 'active' AND wanted_version > delivered_version"),
            sqlite_where=text("state = 'active' AND wanted_version > delivered_version"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # "webhook", "topic" or "scim"; for a Shared Signals stream "ssf" (pushed) or "ssf_poll" (polled)
    channel: Mapped[str] = mapped_column(String(8))
    wanted_version: Mapped[int] = mapped_column(Integer)
    delivered_version: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(BigInteger, default=0)
    snapshot: Mapped[bool] = mapped_column(Boolean, default=False)
    # Rises with every request to deliver (a change, a link, a resync, a redelivery): a delivery
    # in flight when a newer request arrived does not settle it. Also part of the message id.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The channel of the newest pending change ("person", "service", "support", "cli").
    origin: Mapped[str] = mapped_column(String(16))
    # True when the newest pending change was made by this very service.
    origin_self: Mapped[bool] = mapped_column(Boolean, default=False)
    # The id of the request that made the newest pending change, sent as X-Request-Id.
    request_id: Mapped[str | None] = mapped_column(String(128))
    first_pending_at: Mapped[dt.datetime | None]
    # "active", or "dead" once retries gave up (see dead_letters).
    state: Mapped[str] = mapped_column(String(8), default="active")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime]
    failing_since: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[dt.datetime | None]
    #: The last attempt's answer: its HTTP status (none for a topic or no answer), and the delay
    #: in milliseconds from the change's commit to that answer.
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_delay_ms: Mapped[int | None] = mapped_column(BigInteger)


class DeadLetter(Base):
    """A delivery that gave up after its retries; it can be redelivered."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8))
    version: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    failing_since: Mapped[dt.datetime | None]
    gave_up_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    redelivered_at: Mapped[dt.datetime | None]


class Lease(Base):
    """A named lease with an expiry: one holder at a time (the relay on SQLite; Postgres uses
    an advisory lock instead)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime]


class SettledBroker(Base):
    """A memory-only (embedded) Kafka broker whose start was dealt with, for one purpose
    (``name``): for ``service-topics``, every delivery made to services' topics, which a broker
    that started empty lost, was queued again once, by the first worker to look at the broker
    with this cluster id (each start of the embedded broker has a cluster id of its own)."""

    __tablename__ = "settled_brokers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(String(255))
    settled_at: Mapped[dt.datetime]


class Notice(Base):
    """A one-off event for one service (a rights request, an unlink, a restriction), written in
    the transaction that caused it and delivered by the sync worker to the service's webhook
    and/or topic, at least once, on the same retry schedule as profile deliveries. ``body`` is
    the rendered JSON (see ``schemas.events.ServiceNotice``); one row per channel."""

    __tablename__ = "notices"
    __table_args__ = (
        Index(
            "ix_notices_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # "webhook", "topic" or "scim"; for a Shared Signals stream "ssf" (pushed) or "ssf_poll" (polled)
    channel: Mapped[str] = mapped_column(String(8))
    event_type: Mapped[str] = mapped_column(String(64))
    # The Standard Webhooks message id (also the event's ``id``): the same on every retry.
    message_id: Mapped[str] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    # The id of the request that caused the notice, sent as X-Request-Id.
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # "pending", "delivered", or "dead" once retries gave up.
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    failing_since: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    #: The last attempt's answer: HTTP status, and milliseconds from the notice's writing to it.
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_delay_ms: Mapped[int | None] = mapped_column(BigInteger)


class SsfStream(Base):
    """A member service's Shared Signals stream (OpenID SSF 1.0): where and how the hub sends it
    Security Event Tokens about the people linked to it. One stream per service. ``delivery_method``
    is push (RFC 8935, to ``endpoint_url`` with the receiver's ``authorization_header``, sealed at
    rest) or poll (RFC 8936). The SETs themselves are ``notices`` rows (channel ``ssf`` or
    ``ssf_poll``), sent by the same engine as every other notice."""

    __tablename__ = "ssf_streams"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(String(36), unique=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), unique=True)
    delivery_method: Mapped[str] = mapped_column(String(40))
    endpoint_url: Mapped[str | None] = mapped_column(String(2000))
    authorization_header: Mapped[str | None] = mapped_column(Text)
    events_requested: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str | None] = mapped_column(String(500))
    # "enabled", "paused" (SETs are kept, not sent) or "disabled" (none are made).
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    status_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_verification_at: Mapped[dt.datetime | None]
    # The push endpoint's health, as a webhook's (``sync.outcomes``): failing since,
    # quarantined (slowed) since, and the last error.
    failing_since: Mapped[dt.datetime | None]
    quarantined_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))


class RightsRequest(Base):
    """A data-subject request (access, rectification, erasure, restriction, objection,
    portability, consent withdrawal) addressed to the hub itself (``service_id`` null) or to
    one linked service, which answers it as the controller of its own data."""

    __tablename__ = "rights_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(36), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    # A removed service's request (closed: an open one blocks the removal) keeps who it was
    # addressed to here, its ``service_id`` cleared, for as long as closed requests are kept
    # (``ONESIGNIN_RIGHTS_REQUEST_RETENTION_DAYS``). Addressed to the hub: both columns and
    # ``service_id`` null (:attr:`to_hub`).
    removed_service_client_id: Mapped[str | None] = mapped_column(String(64))
    removed_service_name: Mapped[str | None] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(32))
    details: Mapped[str | None] = mapped_column(Text)
    # "received", "acknowledged", "extended", "completed", "refused"
    status: Mapped[str] = mapped_column(String(16), default="received")
    # Who opened it: "person" or "support" (and which agent).
    opened_by: Mapped[str] = mapped_column(String(16))
    opened_by_actor: Mapped[str | None] = mapped_column(String(200))
    # The service whose person token opened it (the API), if one did: through that token the
    # service sees its own requests and the hub requests it opened, never the person's others.
    opened_via_service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id", ondelete="SET NULL"))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    due_at: Mapped[dt.datetime] = mapped_column(index=True)
    extended_at: Mapped[dt.datetime | None]
    closed_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @hybrid_property
    def to_hub(self) -> bool:
        """Addressed to the hub itself (not to a service, present or removed)."""
        return self.service_id is None and self.removed_service_client_id is None

    @to_hub.inplace.expression
    @classmethod
    def _to_hub_expression(cls) -> ColumnElement[bool]:
        return and_(cls.service_id.is_(None), cls.removed_service_client_id.is_(None))


class RightsRequestEvent(Base):
    """One step in a rights request's history, shown to the person."""

    __tablename__ = "rights_request_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("rights_requests.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    # "person", "service", "support", "hub"
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Tombstone(Base):
    """What is left of an erased hub account: its ``sub`` and when, so no stale event, token or
    delivery can bring it back."""

    __tablename__ = "tombstones"

    sub: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditRecord(Base):
    """An append-only record of an action on an account: a support agent's search, view,
    reveal or edit, an erasure, a purge. Written in the same transaction as the action. It names
    the account by ``sub`` (not a foreign key: records outlive an erased account) and holds no
    personal data beyond that."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    # "person", "agent", "service", "cli", "hub"
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200))
    account_sub: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class StaffMember(Base):
    """A support agent or supervisor: a hub account with a staff role and a TOTP second factor
    (RFC 6238). The TOTP secret is encrypted at rest; ``totp_last_step`` refuses a code that was
    already used (replay). ``totp_failures`` counts wrong codes across every console session (reset
    by a right one); from the fifth, ``totp_locked_until`` refuses every code for a while, doubling
    each time. ``totp_confirmed_at`` is unset until the staff member has enrolled the secret in
    their authenticator at their own first console sign-in (``onesignin agents add`` counts as
    enrolled: the operator hands the URI over)."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), unique=True)
    # "agent", "supervisor", "admin" or "service_owner"
    role: Mapped[str] = mapped_column(String(16))
    totp_secret: Mapped[str] = mapped_column(Text)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    totp_failures: Mapped[int] = mapped_column(Integer, default=0)
    totp_locked_until: Mapped[dt.datetime | None]
    totp_confirmed_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    disabled_at: Mapped[dt.datetime | None]


class SecondFactorRemoval(Base):
    """A support agent's request to remove a person's second factor (authenticator app and
    passkeys), which waits for a different staff member with the supervisor role. ``status`` is
    ``pending``, then ``approved`` (the factor was removed) or ``refused``. Staff are named by
    their account's ``sub``; nothing secret is held."""

    __tablename__ = "second_factor_removals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime | None]

    __table_args__ = (
        # One pending request per person, held by the database: two agents asking at once
        # cannot both open one (and a second approval cannot mail "removed" for nothing).
        Index(
            "ux_second_factor_removals_pending",
            account_id,
            unique=True,
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class ConsoleSession(Base):
    """A staff member's session in the support console, separate from any customer session.
    Named by a cookie whose secret's digest is stored; ``stage`` is ``totp`` between the password
    sign-in and the second factor, then ``active``. Ends after inactivity or its lifetime."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(8))
    totp_failures: Mapped[int] = mapped_column(Integer, default=0)
    address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    ended_at: Mapped[dt.datetime | None]


class StaffService(Base):
    """A service a staff member with the ``service_owner`` role looks after: they see its sync
    state, and only its."""

    __tablename__ = "staff_services"

    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True, index=True)
    granted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    granted_by: Mapped[str | None] = mapped_column(String(64))


class Resync(Base):
    """A resync of every person linked to a service, for its progress: ``people`` were queued at
    ``started_at``; a person counts as sent once each channel delivered to them since."""

    __tablename__ = "resyncs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    people: Mapped[int] = mapped_column(Integer)
    started_by: Mapped[str | None] = mapped_column(String(200))


#: Upper bounds (seconds) of the per-minute latency histogram of :class:`SyncMinute`, from a
#: change's commit (a notice's writing) to the service's answer; the last bucket has none.
LATENCY_BOUNDS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
LATENCY_COLUMNS: tuple[str, ...] = tuple(f"latency_{i}" for i in range(len(LATENCY_BOUNDS) + 1))


class SyncMinute(Base):
    """One service's sync in one minute, rolled up as the delivery engine records outcomes (in
    the same transaction): attempts answered ``ok``, attempts that failed, rows given up (dead),
    a latency histogram of the answered ones (``latency_i`` counts those up to
    ``LATENCY_BOUNDS[i]``), and the backlog last sampled in that minute. Deliveries and notices
    alike. Pruned after ``sync_rollup_retention_days``."""

    __tablename__ = "sync_minutes"

    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    minute: Mapped[dt.datetime] = mapped_column(primary_key=True, index=True)
    ok: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    dead: Mapped[int] = mapped_column(Integer, default=0)
    backlog: Mapped[int | None] = mapped_column(Integer)
    latency_0: Mapped[int] = mapped_column(Integer, default=0)
    latency_1: Mapped[int] = mapped_column(Integer, default=0)
    latency_2: Mapped[int] = mapped_column(Integer, default=0)
    latency_3: Mapped[int] = mapped_column(Integer, default=0)
    latency_4: Mapped[int] = mapped_column(Integer, default=0)
    latency_5: Mapped[int] = mapped_column(Integer, default=0)
    latency_6: Mapped[int] = mapped_column(Integer, default=0)
    latency_7: Mapped[int] = mapped_column(Integer, default=0)
    latency_8: Mapped[int] = mapped_column(Integer, default=0)
    latency_9: Mapped[int] = mapped_column(Integer, default=0)
    latency_10: Mapped[int] = mapped_column(Integer, default=0)
    latency_11: Mapped[int] = mapped_column(Integer, default=0)
    latency_12: Mapped[int] = mapped_column(Integer, default=0)
    latency_13: Mapped[int] = mapped_column(Integer, default=0)
