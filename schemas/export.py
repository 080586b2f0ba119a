"""The access and portability export: everything the hub holds about one person, as one JSON
document (``GET /account/export`` and ``GET /api/v1/me/export``; JSON Schema at
``/schemas/account.export.json``).

Every table that holds a row about the person has its section here (a test keeps it so). Never
in it: the password hash, token or code digests, mailed-link secrets, webhook secrets, or the
bodies of messages sent to services (they repeat the details shown here). Times are UTC, ISO 8601.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EXPORT_FORMAT = "onesignin.account-export.v1"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceRef(_Part):
    """A member service, as the person knows it."""

    client_id: str
    name: str


class AccountPart(_Part):
    """The hub account and its basic details (OIDC claim names)."""

    sub: str = Field(description="The person's stable identifier, the same at every member service.")
    email: str
    email_verified: bool
    given_name: str | None
    family_name: str | None
    name: str | None
    birthdate: dt.date | None
    locale: str | None
    zoneinfo: str | None
    phone_number: str | None
    address: dict[str, Any] | None
    status: str = Field(description='"active", or "pending_guardian" while a guardian\'s consent is awaited.')
    guardian_email: str | None
    guardian_consent_at: dt.datetime | None
    restricted_at: dt.datetime | None = Field(description="When sharing stopped (a child without a guardian's consent).")
    delete_after: dt.datetime | None = Field(description="When the account is deleted unless a guardian consents.")
    version: int = Field(description="Rises with every change of the details.")
    created_at: dt.datetime
    updated_at: dt.datetime


class MarketingChoice(_Part):
    opted_in: bool
    changed_at: dt.datetime | None = Field(description="When the person last switched it on or off (null: never).")


class MarketingPart(_Part):
    """News, competitions and offers from the group: each off unless the person opted in."""

    news: MarketingChoice
    competitions: MarketingChoice
    offers: MarketingChoice


class ConsentPart(_Part):
    """What the person allowed a service to see (the scopes), and when."""

    service: ServiceRef
    scopes: list[str]
    granted_at: dt.datetime
    revoked_at: dt.datetime | None


class LinkPart(_Part):
    """A linked account: the person signed in to the service at least once."""

    service: ServiceRef
    status: str = Field(description="active, revoked (unlinked at the hub) or cancelled (by the service).")
    scopes: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    ended_at: dt.datetime | None
    cancellation_url: str | None = Field(description="Where the person cancels their account at that service.")
    cancellation_instructions: str | None


class RightsRequestStep(_Part):
    status: str
    reason: str | None
    actor_kind: str = Field(description="person, service, support or hub.")
    actor: str | None
    at: dt.datetime


class RightsRequestPart(_Part):
    id: str
    service: ServiceRef | None = Field(description="The controller asked; null for the hub itself.")
    type: str
    details: str | None
    status: str
    opened_by: str = Field(description="person, or support on the person's behalf.")
    opened_by_actor: str | None = Field(description="The support agent who opened it, if one did.")
    opened_via: ServiceRef | None = Field(
        default=None, description="The service through which the person opened it with their token; null at the hub itself."
    )
    received_at: dt.datetime
    due_at: dt.datetime
    extended_at: dt.datetime | None
    closed_at: dt.datetime | None
    history: list[RightsRequestStep]


class SignInPart(_Part):
    at: dt.datetime
    address: str | None = Field(description="The client address the attempt came from.")
    succeeded: bool


class ChangePart(_Part):
    """One change of the basic details (history), without the values."""

    version: int
    fields: list[str]
    channel: str = Field(description="person (at the hub), service, support or cli.")
    actor: str | None = Field(description="Who: the person's sub, a service's client_id, a support agent.")
    at: dt.datetime


class SessionPart(_Part):
    """A sign-in session at the hub, and the services signed in to through it."""

    created_at: dt.datetime
    auth_time: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    ended_at: dt.datetime | None
    amr: list[str] = Field(default_factory=list, description="How you proved who you are (RFC 8176): pwd, otp.")
    user_agent: str | None = Field(None, description="The browser's User-Agent when the session started.")
    services: list[ServiceRef]


class GrantPart(_Part):
    """An access (and refresh) token issued to a service, without the token itself."""

    service: ServiceRef
    scopes: list[str]
    issued_at: dt.datetime
    access_expires_at: dt.datetime
    refresh_expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class AuthorizationCodePart(_Part):
    """A one-time code on its way to a service (kept a day after it expires, for replay detection)."""

    service: ServiceRef
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None


class MailedLinkPart(_Part):
    """A single-use link the hub mailed (``verify_email``: address confirmation,
    ``reset_password``, ``guardian_consent``, ``change_email``: a new sign-in address, pending
    until this link is opened). ``used_at`` is also set when the link was cancelled (replaced by a
    newer one, or made stale by a change of address or password)."""

    purpose: str
    sent_to: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None


class DeliveryPart(_Part):
    """What profile sync sent (or is sending) to a service: the details themselves are those above,
    as far as the link's scopes allow."""

    service: ServiceRef
    channel: str = Field(description="webhook or topic.")
    delivered_version: int
    delivered_at: dt.datetime | None
    pending: bool
    state: str


class DeadLetterPart(_Part):
    service: ServiceRef
    channel: str
    version: int
    gave_up_at: dt.datetime
    redelivered_at: dt.datetime | None


class NoticePart(_Part):
    """A one-off message about the person sent to a service (an unlink, a rights request, a restriction)."""

    service: ServiceRef
    type: str
    channel: str
    created_at: dt.datetime
    state: str
    delivered_at: dt.datetime | None


class AuditPart(_Part):
    """A recorded action on the account: who (a support agent, the person, the hub) did what, when."""

    at: dt.datetime
    actor_kind: str
    actor: str | None
    action: str
    reason: str | None


class ConsoleSessionPart(_Part):
    """A session in the support console (only for staff)."""

    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    ended_at: dt.datetime | None
    address: str | None = Field(description="The client address it started from.")


class StaffServicePart(_Part):
    """A service a service owner looks after in the support console."""

    service: ServiceRef
    granted_at: dt.datetime
    granted_by: str | None


class StaffPart(_Part):
    """The person's staff role in the support console, if they have one (never its second-factor secret)."""

    role: str = Field(description="agent, supervisor, admin or service_owner.")
    created_at: dt.datetime
    created_by: str | None
    disabled_at: dt.datetime | None
    console_sessions: list[ConsoleSessionPart]
    looks_after: list[StaffServicePart] = Field(default_factory=list, description="A service owner's services.")


class SecondFactorPart(_Part):
    """Two-step sign-in with an authenticator app (never its key or the recovery codes)."""

    created_at: dt.datetime
    confirmed_at: dt.datetime | None = Field(description="When it was turned on; null while still being set up.")
    recovery_codes_left: int


class PasskeyPart(_Part):
    """A passkey that signs the person in (its public key and counter stay at the hub: nothing
    secret is kept of a passkey)."""

    name: str = Field(description="The name the person gave it.")
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    synced: bool = Field(description="Whether it can be synced between the person's devices (backup eligible).")
    transports: list[str] = Field(description="How the browser reaches it: internal, usb, nfc, ble, hybrid.")


class SecondFactorRemovalPart(_Part):
    """A request by customer support to remove the person's second factor, and its decision."""

    status: str = Field(description="pending, approved (the factor was removed) or refused.")
    reason: str = Field(description="The reason support gave.")
    requested_at: dt.datetime
    decided_at: dt.datetime | None


class AccountExport(_Part):
    """Everything One Sign In holds about the person, for their own use (access and portability)."""

    format: Literal["onesignin.account-export.v1"] = EXPORT_FORMAT
    exported_at: dt.datetime
    account: AccountPart
    marketing: MarketingPart
    consents: list[ConsentPart]
    links: list[LinkPart]
    rights_requests: list[RightsRequestPart]
    sign_ins: list[SignInPart]
    changes: list[ChangePart]
    sessions: list[SessionPart]
    grants: list[GrantPart]
    authorization_codes: list[AuthorizationCodePart]
    mailed_links: list[MailedLinkPart]
    deliveries: list[DeliveryPart]
    dead_letters: list[DeadLetterPart]
    notices: list[NoticePart]
    audit: list[AuditPart] = Field(description="Actions recorded on the account, e.g. a support agent viewing it.")
    staff: StaffPart | None = Field(None, description="For a support agent or supervisor: their role and console sessions.")
    second_factor: SecondFactorPart | None = Field(None, description="Two-step sign-in, when set up.")
    passkeys: list[PasskeyPart] = Field(default_factory=list, description="The person's passkeys.")
    second_factor_removals: list[SecondFactorRemovalPart] = Field(
        default_factory=list, description="Requests by customer support to remove the second factor."
    )
