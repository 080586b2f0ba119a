"""Bodies of the JSON API (``/api/v1``), shared by the hub and its documentation."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from schemas.events import Profile


class ProfileResponse(BaseModel):
    """``GET``/``PATCH /api/v1/me``: the person's profile as the calling service may see it."""

    model_config = ConfigDict(extra="forbid")

    sub: str
    version: int = Field(description="Rises with every change; also the ETag, for If-Match.")
    profile: Profile


class Problem(BaseModel):
    """An error answer (RFC 6749 style ``error`` codes)."""

    error: str
    error_description: str
    problems: list[dict[str, Any]] | None = Field(None, description="Field-by-field messages for a 422.")


class ResyncResponse(BaseModel):
    queued: int = Field(description="People whose current profile will be sent again, paced.")
    rate_per_second: float


# -- GET /api/v1/sync/status ------------------------------------------------------------------


class ChannelBacklog(BaseModel):
    pending: int = Field(description="People with a change not yet delivered on this channel.")
    oldest_pending_at: dt.datetime | None
    failing: int = Field(description="Of those, how many failed at least once.")


class WebhookHealth(BaseModel):
    url: str
    state: Literal["healthy", "failing", "quarantined", "disabled"]
    failing_since: dt.datetime | None
    quarantined_at: dt.datetime | None
    disabled_at: dt.datetime | None
    last_error: str | None


class ScimHealth(BaseModel):
    """The service's SCIM 2.0 server, as the hub provisions Users there (RFC 7644): made on
    link, patched on change, ``active: false`` on unlink, cancellation or restriction, deleted
    on erasure. Retried, quarantined and given up as a webhook is; never disabled."""

    base_url: str
    state: Literal["healthy", "failing", "quarantined"]
    failing_since: dt.datetime | None
    quarantined_at: dt.datetime | None
    last_error: str | None


class NoticeCounts(BaseModel):
    """One-off notices (unlinks, rights requests, restrictions) to the service."""

    pending: int = Field(description="Waiting to be delivered (due or scheduled for a retry).")
    dead: int = Field(description="Gave up after failing for the whole retry period.")


class SharedSignalsStatus(BaseModel):
    """The service's Shared Signals stream: its status, its push endpoint's health, and its SETs
    waiting (to be pushed, or polled and acknowledged) and given up (refused by the receiver,
    reported in ``setErrs``, or failing for the whole retry period)."""

    stream_id: str
    delivery_method: Literal["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]
    status: Literal["enabled", "paused", "disabled"]
    state: Literal["healthy", "failing", "quarantined"] = Field(description="The push endpoint's health (always healthy when polled).")
    failing_since: dt.datetime | None
    quarantined_at: dt.datetime | None
    last_error: str | None
    pending: int
    dead: int


class SyncStatus(BaseModel):
    """The calling service's sync state."""

    client_id: str
    channels: list[Literal["webhook", "topic", "scim"]]
    webhook: WebhookHealth | None
    scim: ScimHealth | None = Field(None, description="The SCIM server's health, when the service has one.")
    topic: str | None
    backlog: dict[str, ChannelBacklog]
    dead_letters: int = Field(description="Deliveries that gave up and were not redelivered.")
    notices: NoticeCounts
    shared_signals: SharedSignalsStatus | None = Field(None, description="The service's Shared Signals stream, if it has one.")


class PersonChannelStatus(BaseModel):
    delivered_version: int
    pending: bool
    state: Literal["active", "dead"]
    attempts: int
    next_attempt_at: dt.datetime | None
    failing_since: dt.datetime | None
    last_error: str | None
    delivered_at: dt.datetime | None


class PersonSyncStatus(BaseModel):
    """With ``?sub=``: one linked person's delivered version against their current one."""

    sub: str
    current_version: int
    channels: dict[str, PersonChannelStatus]


class SyncStatusResponse(RootModel[SyncStatus | PersonSyncStatus]):
    """The service's sync state, or with ``?sub=`` one linked person's."""


# -- /api/v1/links/{sub} ----------------------------------------------------------------------


class LinkResponse(BaseModel):
    """A person's link to the calling service. ``active`` while they use it through the hub;
    ``revoked`` when they unlinked it at the hub (the service's account is the service's to
    keep or cancel); ``cancelled`` when the service reported it cancelled its own account."""

    model_config = ConfigDict(extra="forbid")

    sub: str
    status: Literal["active", "revoked", "cancelled"]
    scope: str = Field(description="The scopes the person granted the service, space-separated.")
    created_at: dt.datetime = Field(description="When the person first signed in to the service.")
    updated_at: dt.datetime
    ended_at: dt.datetime | None = Field(description="When the link last stopped being active (null if it never did).")
