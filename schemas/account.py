"""The basic account details, with OpenID Connect's standard claim names (OIDC Core 5.1)."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from functools import cache
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
)

from schemas.messages import N_, Problem, Translate, english
from schemas.text import MULTILINE, SINGLE_LINE, check_single_line

EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s.\x00-\x1f\x7f]{2,}$")
LOCALE_RE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")
PHONE_RE = re.compile(r"\+[1-9][0-9]{6,14}")

# Free text is checked by schemas.text: no control or invisible formatting characters.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SINGLE_LINE]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=400), SINGLE_LINE]
Line = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), SINGLE_LINE]
#: OIDC Core 5.1.1: ``formatted`` and ``street_address`` may hold several lines.
Lines = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500), MULTILINE]


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def normalize_email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not EMAIL_RE.match(value):
        raise Problem("Enter an email address like name@example.com.")
    check_single_line(value)
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}".lower()


class Address(BaseModel):
    """OIDC Core 5.1.1 address claim. Parts without a value are left out when written."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _without_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    formatted: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000), MULTILINE] | None = None
    street_address: Lines | None = None
    locality: Line | None = None
    region: Line | None = None
    postal_code: Annotated[str, StringConstraints(strip_whitespace=True, max_length=20), SINGLE_LINE] | None = None
    country: Line | None = None


class BasicDetailsUpdate(BaseModel):
    """A change to some basic details: only the fields present are changed; null clears a field."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = None
    given_name: Name | None = None
    family_name: Name | None = None
    name: FullName | None = None
    birthdate: dt.date | None = None
    locale: str | None = None
    zoneinfo: str | None = None
    phone_number: str | None = None
    address: Address | None = None
    # Strict: true, false or null, as documented. (Lax, pydantic would take 0, 1.0 or "yes".)
    marketing_news: StrictBool | None = None
    marketing_competitions: StrictBool | None = None
    marketing_offers: StrictBool | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("birthdate", mode="before")
    @classmethod
    def _birthdate_written(cls, value: Any) -> Any:
        # Written as documented, YYYY-MM-DD. (Lax, pydantic would take 0 as 1970-01-01.)
        if value is not None and not isinstance(value, (str, dt.date)):
            raise Problem(_PYDANTIC["date_parsing"])
        return value

    @field_validator("birthdate")
    @classmethod
    def _birthdate(cls, value: dt.date | None) -> dt.date | None:
        if value is None:
            return None
        if value > dt.date.today():
            raise Problem("A date of birth cannot be in the future.")
        if value.year < 1900:
            raise Problem("Enter a date of birth after 1900.")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not LOCALE_RE.fullmatch(value) or len(value) > 35:
            raise Problem("Use a language tag such as en-GB or fr.")
        return value.replace("_", "-")

    @field_validator("zoneinfo")
    @classmethod
    def _zoneinfo(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value not in _zones():
            raise Problem("Use a time zone name such as Europe/Paris.")
        return value

    @field_validator("phone_number")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        compact = re.sub(r"[\s().-]", "", value)
        if not PHONE_RE.fullmatch(compact):
            raise Problem("Use the international format, e.g. +447700900123.")
        return compact

    def changes(self) -> dict[str, object]:
        """The fields the caller sent, as stored values."""
        data = self.model_dump(exclude_unset=True)
        if "address" in data and data["address"] is not None:
            data["address"] = {k: v for k, v in data["address"].items() if v}
        return data


class BasicDetails(BasicDetailsUpdate):
    """Details given at registration: email required."""

    email: str  # type: ignore[assignment]


class ValidationProblem(BaseModel):
    """One field-level problem in a request body."""

    field: str
    message: str


#: pydantic's own checks that forms can fail, in the words of the forms (the rest keep pydantic's).
_PYDANTIC = {
    "string_too_long": N_("Use at most %(max_length)s characters."),
    "string_too_short": N_("This cannot be empty."),
    "missing": N_("This is needed."),
    "date_from_datetime_parsing": N_("Enter a date such as 2001-02-28."),
    "date_parsing": N_("Enter a date such as 2001-02-28."),
}


def _message(error: Any, translate: Translate) -> str:
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Problem):
        return cause.words(translate)
    if error["type"] in _PYDANTIC:
        return translate(_PYDANTIC[error["type"]], {k: v for k, v in error.get("ctx", {}).items() if k != "error"})
    return str(cause or error["msg"]).removeprefix("Value error, ")


def problems(exc: ValidationError, translate: Translate = english) -> list[ValidationProblem]:
    """Each problem of ``exc`` by field, in English or, given ``translate``, the reader's language."""
    out = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "body"
        out.append(ValidationProblem(field=field, message=_message(error, translate)))
    return out


#: How the forms label the parts of an address.
ADDRESS_PARTS = {
    "formatted": N_("Address"),
    "street_address": N_("Street"),
    "locality": N_("Town or city"),
    "region": N_("Region"),
    "postal_code": N_("Postcode"),
    "country": N_("Country"),
}


def form_errors(exc: ValidationError, translate: Translate = english) -> dict[str, str]:
    """The problems keyed by the form field that shows them: a problem with a part of the
    address is shown under the address, named by its label, beside the other parts' problems."""
    found: dict[str, str] = {}
    for problem in problems(exc, translate):
        key, _, part = problem.field.partition(".")
        if part:
            # Translators: a part of a postal address, then what is wrong with it ("Postcode: Use at most …").
            message = translate(N_("%(part)s: %(problem)s"), {"part": translate(ADDRESS_PARTS.get(part, part), {}), "problem": problem.message})
        else:
            message = problem.message
        found[key] = f"{found[key]} {message}" if key in found else message
    return found
