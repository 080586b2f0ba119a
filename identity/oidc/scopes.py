"""Scopes the hub supports and the claims each one releases (OpenID Connect Core 5.4)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from identity.i18n import lazy_gettext

SCOPE_CLAIMS: dict[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "profile": ("name", "given_name", "family_name", "birthdate", "locale", "zoneinfo", "updated_at"),
    "email": ("email", "email_verified"),
    "phone": ("phone_number", "phone_number_verified"),
    "address": ("address",),
    "marketing": ("marketing_news", "marketing_competitions", "marketing_offers"),
    "offline_access": (),
    # Not a claim: the person's whole export (GET /api/v1/me/export), for an app of their own
    # that the operator registered with this scope; never in a service's default scopes.
    "export": (),
}

SUPPORTED_SCOPES: tuple[str, ...] = tuple(SCOPE_CLAIMS)

# What a service asking for each scope may do, as the consent page and the account page say it.
SCOPE_DESCRIPTIONS: dict[str, Any] = {
    "openid": lazy_gettext("Know who you are when you sign in"),
    "profile": lazy_gettext("Your name, date of birth, language and time zone"),
    "email": lazy_gettext("Your email address"),
    "phone": lazy_gettext("Your phone number"),
    "address": lazy_gettext("Your postal address"),
    "marketing": lazy_gettext("Your marketing preferences (news, competitions, offers)"),
    "offline_access": lazy_gettext("Stay connected when you are not using it"),
    "export": lazy_gettext(
        "Download a copy of everything One Sign In holds about you, including which services you use and your sign-in history"
    ),
}


def described(scope: str | list[str] | None) -> list[tuple[str, Any]]:
    """Each scope with the plain words people read for it: the consent page and the account page
    both name scopes through this one mapping, so they cannot drift apart."""
    items = split(scope) if scope is None or isinstance(scope, str) else scope
    return [(s, SCOPE_DESCRIPTIONS.get(s, s)) for s in items]


def split(scope: str | None) -> list[str]:
    seen: list[str] = []
    for item in (scope or "").split():
        if item not in seen:
            seen.append(item)
    return seen


def join(scopes: list[str] | set[str] | tuple[str, ...]) -> str:
    order = {name: i for i, name in enumerate(SUPPORTED_SCOPES)}
    return " ".join(sorted(set(scopes), key=lambda s: (order.get(s, len(order)), s)))


@lru_cache(maxsize=1024)
def claims_for(scope: str) -> frozenset[str]:
    claims: set[str] = set()
    for item in split(scope):
        claims.update(SCOPE_CLAIMS.get(item, ()))
    return frozenset(claims)
