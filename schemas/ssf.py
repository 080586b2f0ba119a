"""Shared Signals (OpenID SSF 1.0) bodies of the stream management and poll endpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class Delivery(BaseModel):
    model_config = ConfigDict(extra="allow")

    method: Literal["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"] = Field(
        description="urn:ietf:rfc:8935 (push to endpoint_url) or urn:ietf:rfc:8936 (poll the endpoint_url the hub gives)."
    )
    endpoint_url: str | None = Field(None, description="Push: where the hub POSTs each SET. Poll: where the service polls (set by the hub).")


class DeliveryIn(Delivery):
    model_config = ConfigDict(extra="allow", strict=True)

    authorization_header: str | None = Field(
        None, description="Push: sent as the Authorization header of every SET POSTed (kept sealed, never read back)."
    )


class StreamConfigurationIn(BaseModel):
    """A stream as the receiver sets it (create, replace, or update with the fields present)."""

    # Strict, as every body a service sends: each field of its documented type, nothing converted.
    model_config = ConfigDict(extra="allow", strict=True)

    stream_id: str | None = Field(None, description="The stream to replace or update (not for a creation).")
    delivery: DeliveryIn | None = None
    events_requested: list[str] | None = Field(None, description="Event type URIs the receiver wants.")
    description: str | None = None


class StreamConfiguration(BaseModel):
    """A stream as the hub holds it (SSF 1.0 section 8.1.1)."""

    stream_id: str
    iss: str
    aud: str
    delivery: Delivery
    events_supported: list[str]
    events_requested: list[str]
    events_delivered: list[str] = Field(description="What was requested and is supported: what the stream carries.")
    min_verification_interval: int
    description: str | None = None


class StreamConfigurations(RootModel[StreamConfiguration | list[StreamConfiguration]]):
    """One stream (asked by ``stream_id``) or the list of the service's streams (at most one)."""


class StreamStatus(BaseModel):
    stream_id: str
    status: Literal["enabled", "paused", "disabled"]
    reason: str | None = None


class StreamStatusUpdate(BaseModel):
    model_config = ConfigDict(strict=True)

    stream_id: str
    status: Literal["enabled", "paused", "disabled"]
    reason: str | None = None


class VerificationRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    stream_id: str
    state: str | None = Field(None, description="Echoed in the verification event.")


class SetError(BaseModel):
    model_config = ConfigDict(strict=True)

    err: str
    description: str | None = None


class PollRequest(BaseModel):
    """RFC 8936 section 2.4."""

    model_config = ConfigDict(populate_by_name=True, strict=True)

    maxEvents: int | None = Field(None, ge=0, description="At most this many SETs (and at most 100).")  # noqa: N815
    returnImmediately: bool | None = Field(None, description="false: wait up to a few seconds for a SET.")  # noqa: N815
    ack: list[str] | None = Field(None, description="jti of SETs processed: never sent again.")
    setErrs: dict[str, SetError] | None = Field(None, description="jti of SETs that could not be processed, with why.")  # noqa: N815


class PollResponse(BaseModel):
    sets: dict[str, str] = Field(description="jti to the signed SET (application/secevent+jwt).")
    moreAvailable: bool | None = None  # noqa: N815



class SubjectIdentifier(BaseModel):
    """RFC 9493 / SSF 1.0 subject: ``iss_sub`` (the hub's issuer and the sub your service knows),
    ``email`` (the old address, in identifier-changed only, to services that may see email) or
    ``opaque`` (the stream id, in a verification event)."""

    model_config = ConfigDict(extra="allow")

    format: Literal["iss_sub", "email", "opaque"]
    iss: str | None = None
    sub: str | None = None
    email: str | None = None
    id: str | None = None


class SecurityEventToken(BaseModel):
    """A Security Event Token (RFC 8417), the claims of the JWT signed by the hub (header ``typ:
    secevent+jwt``, ``alg`` RS256, ``kid`` of a key in the hub's JWKS). ``events`` holds exactly
    one event type URI: CAEP session-revoked (``initiating_entity``, ``event_timestamp``),
    credential-change (``credential_type`` password, app, fido2-platform or fido2-roaming;
    ``change_type`` create, update or delete), assurance-level-change (``namespace`` custom,
    ``current_level`` and ``previous_level`` urn:onesignin:acr:password or urn:onesignin:acr:mfa,
    ``change_direction``); RISC account-disabled, account-enabled, account-purged,
    identifier-changed (``new-value``); SSF verification (``state``)."""

    iss: str = Field(description="The hub's issuer.")
    aud: str = Field(description="Your service's client_id.")
    jti: str = Field(description="Unique per SET, the same on every retry: deduplicate on it.")
    iat: int
    sub_id: SubjectIdentifier
    events: dict[str, dict[str, Any]]
