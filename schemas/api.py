"""Bodies of the JSON API (``/api/v1``), shared by the hub and its documentation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
