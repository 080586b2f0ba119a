"""What one service may see of a person: the claims of the scopes the person granted it
(data minimisation), and the compact form of "which claims changed" kept in the delivery store."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from identity.accounts.claims import granted_claims as profile
from identity.oidc.scopes import claims_for

__all__ = ["CLAIM_BITS", "mask", "names", "profile", "visible_mask"]

#: Claims that can change, each with a fixed bit in ``deliveries.changed``. Append only.
CLAIM_BITS: tuple[str, ...] = (
    "email",
    "email_verified",
    "name",
    "given_name",
    "family_name",
    "birthdate",
    "locale",
    "zoneinfo",
    "phone_number",
    "address",
    "marketing_news",
    "marketing_competitions",
    "marketing_offers",
)
_BIT = {name: 1 << i for i, name in enumerate(CLAIM_BITS)}


def mask(names: Iterable[str]) -> int:
    value = 0
    for name in names:
        value |= _BIT.get(name, 0)
    return value


def names(value: int) -> list[str]:
    return [name for name in CLAIM_BITS if value & _BIT[name]]


@lru_cache(maxsize=1024)
def visible_mask(scope: str) -> int:
    """The bits of the claims a service with ``scope`` may see."""
    return mask(claims_for(scope))
