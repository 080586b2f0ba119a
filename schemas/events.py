"""Events, as pydantic models shared by the hub and the sync worker.

Two families, each a union discriminated on ``type``:

* :data:`HubEvent`: what the hub publishes on its own topic ``onesignin.profile.v1`` (keyed by
  ``sub``). It says *that* something changed, never the personal data itself: the sync worker
  reads the current state when it delivers.
* :data:`ServiceEvent`: what a member service receives, on its webhook (signed as Standard
  Webhooks) and on its own topic ``onesignin.service.<client_id>.v1``. The shape follows Standard
  Webhooks' recommendation: ``type``, ``timestamp``, ``data``, plus the event ``id``.

Deliveries are state-based: ``data.profile`` is the person's whole projected profile at
``data.version``; a receiver keeps the highest version it has seen and ignores older ones.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
)

from schemas.account import Address

PROFILE_TOPIC = "onesignin.profile.v1"

Channel = Literal["person", "service", "support", "cli"]


def service_topic(client_id: str) -> str:
    """The Kafka topic of one member service."""
    return f"onesignin.service.{client_id}.v1"


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- On the hub's own topic -----------------------------------------------------------------


class ProfileChanged(_Event):
    """Basic details of a person changed (committed in the same transaction as the change)."""

    type: Literal["profile.changed"] = "profile.changed"
    id: str = Field(description="Event id (UUID).")
    sub: str
    version: int = Field(ge=1, description="The account's version after the change.")
    changed: list[str] = Field(description="Claim names that changed.")
    channel: Channel = Field(description="Who made the change: the person, a member service, support, or the CLI.")
    client_id: str | None = Field(None, description="The member service that made the change, if one did.")
    occurred_at: dt.datetime
    request_id: str | None = Field(
        None, description="The id of the hub request that made the change (its X-Request-Id), to follow it through the logs."
    )


class LinkCreated(_Event):
    """A person linked a member service (their first sign-in to it): it gets a snapshot."""

    type: Literal["link.created"] = "link.created"
    id: str
    sub: str
    client_id: str
    version: int = Field(ge=1)
    occurred_at: dt.datetime
    request_id: str | None = Field(
        None, description="The id of the hub request that made the change (its X-Request-Id), to follow it through the logs."
    )


HubEvent = Annotated[ProfileChanged | LinkCreated, Field(discriminator="type")]
hub_event = TypeAdapter(HubEvent)


# -- To a member service --------------------------------------------------------------------


class Profile(BaseModel):
    """A person's basic details as one service may see them: only the claims of the scopes the
    person granted that service. A claim of a granted scope with no value is ``null``; a claim
    outside the granted scopes is absent."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent means "not yours to see": claims outside the scopes are never written as null.
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}

    sub: str
    email: str | None = None
    email_verified: bool | None = None
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    birthdate: dt.date | None = None
    locale: str | None = None
    zoneinfo: str | None = None
    updated_at: int | None = Field(None, description="Seconds since the epoch (OIDC Core 5.1).")
    phone_number: str | None = None
    phone_number_verified: bool | None = None
    address: Address | None = None
    marketing_news: bool | None = None
    marketing_competitions: bool | None = None
    marketing_offers: bool | None = None


class Origin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel = Field(description="person (at the hub), service (a member service), support, or cli.")
    this_service: bool = Field(
        False, description="True when this very service made the change (only sent with echo suppression off)."
    )


class ProfileUpdatedData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: str
    version: int = Field(ge=1)
    changed: list[str] = Field(description="Claim names (within the service's scopes) changed since the last delivery.")
    profile: Profile
    origin: Origin


class ProfileSnapshotData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: str
    version: int = Field(ge=1)
    reason: Literal["linked", "resync", "redelivery"]
    profile: Profile


class ProfileUpdated(_Event):
    """The person's basic details changed; ``data.profile`` is their whole current profile."""

    type: Literal["profile.updated"] = "profile.updated"
    id: str = Field(description="Message id; the same for every retry of one delivery (the webhook-id header).")
    timestamp: dt.datetime
    data: ProfileUpdatedData


class ProfileSnapshot(_Event):
    """The person's whole current profile, sent when they link the service and on resync."""

    type: Literal["profile.snapshot"] = "profile.snapshot"
    id: str
    timestamp: dt.datetime
    data: ProfileSnapshotData


# -- One-off notices to a member service ----------------------------------------------------
# Unlike profile deliveries these are events, not state: each is delivered at least once, with
# the same ``id`` on every retry (receivers deduplicate on it), one person's notices in order.

RightsType = Literal[
    "access", "rectification", "erasure", "restriction", "objection", "portability", "consent_withdrawal"
]


class LinkRevokedData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: str
    revoked_at: dt.datetime
    note: str = Field(
        "The person unlinked this service at the hub. Their account here is yours to keep or cancel; "
        "no more profile updates will be sent unless they link it again.",
    )


class LinkRevoked(_Event):
    """The person unlinked this service at the hub (withdrew their consent to share): sync stops.
    The service's own account stays the service's to keep or cancel."""

    type: Literal["link.revoked"] = "link.revoked"
    id: str
    timestamp: dt.datetime
    data: LinkRevokedData


class RightsRequestData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The request's id; move it on with POST /api/v1/rights-requests/{id}/status.")
    sub: str
    type: RightsType
    details: str | None = Field(None, description="What the person wrote, if anything.")
    received_at: dt.datetime
    due_at: dt.datetime = Field(description="One month after receipt; extendable once by two months with a reason.")
    opened_by: Literal["person", "support"]


class RightsRequested(_Event):
    """A person exercised a data-subject right with this service, as the controller of the data
    it holds. The hub only routes and tracks the request; the service answers it."""

    type: Literal["rights.requested"] = "rights.requested"
    id: str
    timestamp: dt.datetime
    data: RightsRequestData


class AccountRestrictedData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: str
    reason: Literal["child_without_guardian_consent"]
    restricted_at: dt.datetime
    delete_after: dt.datetime | None = Field(None, description="When the hub deletes its account unless a guardian confirms.")


class AccountRestricted(_Event):
    """Stop processing this person's data beyond storage: the account belongs to a child under
    the age of digital consent without a guardian's consent. The hub shares nothing more."""

    type: Literal["account.restricted"] = "account.restricted"
    id: str
    timestamp: dt.datetime
    data: AccountRestrictedData


class AccountRestrictionLiftedData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: str
    lifted_at: dt.datetime


class AccountRestrictionLifted(_Event):
    """A guardian consented: the restriction ends and a profile snapshot follows."""

    type: Literal["account.restriction_lifted"] = "account.restriction_lifted"
    id: str
    timestamp: dt.datetime
    data: AccountRestrictionLiftedData


ServiceNotice = Annotated[
    LinkRevoked | RightsRequested | AccountRestricted | AccountRestrictionLifted, Field(discriminator="type")
]
service_notice = TypeAdapter(ServiceNotice)

ServiceEvent = Annotated[
    ProfileUpdated
    | ProfileSnapshot
    | LinkRevoked
    | RightsRequested
    | AccountRestricted
    | AccountRestrictionLifted,
    Field(discriminator="type"),
]
service_event = TypeAdapter(ServiceEvent)

#: Every event model, by name, for the JSON Schemas served under /schemas/.
EVENT_MODELS: dict[str, type[BaseModel]] = {
    "profile.updated": ProfileUpdated,
    "profile.snapshot": ProfileSnapshot,
    "link.revoked": LinkRevoked,
    "rights.requested": RightsRequested,
    "account.restricted": AccountRestricted,
    "account.restriction_lifted": AccountRestrictionLifted,
    "hub.profile.changed": ProfileChanged,
    "hub.link.created": LinkCreated,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema() for name, model in EVENT_MODELS.items()}
