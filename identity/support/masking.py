"""Masked fields of the console: the date of birth, phone number and postal address are shown
with only a small tail visible until an agent reveals them with a reason. Pure functions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from identity.support.words import lazy_gettext

DOT = "\u2022"

#: The fields that stay masked until revealed, with their labels.
MASKED: dict[str, Any] = {"birthdate": lazy_gettext("Date of birth"), "phone_number": lazy_gettext("Phone number"), "address": lazy_gettext("Postal address")}

ADDRESS_PARTS = ("street_address", "locality", "region", "postal_code", "country")


def mask_birthdate(value: dt.date | None) -> str | None:
    """Only the day of the month shows: ``••••-••-12``."""
    return None if value is None else f"{DOT * 4}-{DOT * 2}-{value.day:02d}"


def mask_phone(value: str | None) -> str | None:
    """The last two digits show: ``+••••••••••23``."""
    if not value:
        return None
    head = "+" if value.startswith("+") else ""
    digits = value.removeprefix("+")
    return head + DOT * max(len(digits) - 2, 0) + digits[-2:]


def mask_address(value: dict[str, Any] | None) -> str | None:
    """Only the country shows (every other part present becomes dots)."""
    if not value:
        return None
    hidden = [DOT * 4 for part in ("formatted", *ADDRESS_PARTS[:-1]) if value.get(part)]
    country = value.get("country")
    return ", ".join([*hidden, *([str(country)] if country else [])])


def format_address(value: dict[str, Any] | None) -> str | None:
    """The whole address on one line (revealed)."""
    if not value:
        return None
    if value.get("formatted"):
        return str(value["formatted"])
    return ", ".join(str(value[p]) for p in ADDRESS_PARTS if value.get(p))


def shown(account: Any, revealed: set[str]) -> dict[str, str | None]:
    """Each masked field as the page shows it: in clear when revealed, masked otherwise."""
    birthdate, phone, address = account.birthdate, account.phone_number, account.address
    return {
        "birthdate": (birthdate.isoformat() if birthdate else None) if "birthdate" in revealed else mask_birthdate(birthdate),
        "phone_number": phone if "phone_number" in revealed else mask_phone(phone),
        "address": format_address(address) if "address" in revealed else mask_address(address),
    }
