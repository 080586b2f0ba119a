"""Bodies of the rights-request API: what a person (through a service holding their access
token) sends to open a request, what a service sends to move one on, and the requests with
their history as the person and the service see them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.events import RightsType
from schemas.text import MULTILINE

Status = Literal["received", "acknowledged", "extended", "completed", "refused"]
Step = Literal["acknowledged", "extended", "completed", "refused"]
Actor = Literal["person", "service", "support", "hub"]
MAX_TEXT = 4000
#: What a person or a service writes for the other to read: several lines of free text, without
#: control or invisible formatting characters (schemas.text).
Text = Annotated[str, Field(max_length=MAX_TEXT), MULTILINE]


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class RightsRequestCreate(BaseModel):
    """``POST /api/v1/me/rights-requests``."""

    model_config = ConfigDict(extra="forbid")

    type: RightsType = Field(description="The right the person exercises.")
    service: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="null: the hub itself (One Sign In's own data); otherwise the calling "
        "service's own client_id. Requests to the person's other services are opened at the hub.",
    )
    details: Text | None = Field(
        None, description="What the person wants, in their words (several lines allowed)."
    )

    _checked = field_validator("service")(_no_nul)


class RightsStatusChange(BaseModel):
    """``POST /api/v1/rights-requests/{id}/status``."""

    model_config = ConfigDict(extra="forbid")

    status: Step = Field(
        description="acknowledged, extended (once, with a reason), completed, or refused (with a reason)."
    )
    reason: Text | None = Field(
        None,
        validate_default=True,
        description="Shown to the person. Required to extend or refuse.",
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None, info: ValidationInfo) -> str | None:
        if (
            info.data.get("status") in ("extended", "refused")
            and not (value or "").strip()
        ):
            raise ValueError(
                f"a reason is required to mark a request {info.data['status']}; the person is shown it"
            )
        return value


class RightsRequestStep(BaseModel):
    """One step of a request's history."""

    status: Status
    by: Actor = Field(
        description="Who took the step: the person, the service, support, or the hub's operators."
    )
    reason: str | None = None
    at: dt.datetime


class RightsRequestView(BaseModel):
    """A request as the person sees it."""

    id: str
    type: RightsType
    service: str | None = Field(
        description="The controller it is addressed to: a client_id, or null for the hub."
    )
    status: Status
    details: str | None
    opened_by: Literal["person", "support"]
    received_at: dt.datetime
    due_at: dt.datetime = Field(
        description="One month after receipt; three months once extended."
    )
    extended_at: dt.datetime | None
    closed_at: dt.datetime | None
    overdue: bool = Field(description="Still open after its due date.")
    history: list[RightsRequestStep]


class RightsRequestList(BaseModel):
    """``GET /api/v1/me/rights-requests``: the person's requests to the hub and to the calling
    service, newest first."""

    requests: list[RightsRequestView]


class ServiceRightsRequest(RightsRequestView):
    """A request as the service it is addressed to sees it: also whose it is."""

    sub: str


class ServiceRightsRequestList(BaseModel):
    """``GET /api/v1/rights-requests``: the calling service's requests, earliest due first."""

    requests: list[ServiceRightsRequest]
