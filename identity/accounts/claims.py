"""The claims of an account that a given scope releases (userinfo, and later sync)."""

from __future__ import annotations

from typing import Any

from identity.db.models import Account
from identity.oidc.scopes import claims_for


def all_claims(account: Account) -> dict[str, Any]:
    return {
        "sub": account.sub,
        "name": account.name,
        "given_name": account.given_name,
        "family_name": account.family_name,
        "birthdate": account.birthdate.isoformat() if account.birthdate else None,
        "locale": account.locale,
        "zoneinfo": account.zoneinfo,
        "updated_at": int(account.updated_at.timestamp()),
        "email": account.email,
        "email_verified": account.email_verified,
        "phone_number": account.phone_number,
        "phone_number_verified": False if account.phone_number else None,
        "address": account.address or None,
        "marketing_news": account.marketing_news,
        "marketing_competitions": account.marketing_competitions,
        "marketing_offers": account.marketing_offers,
    }


def user_claims(account: Account, scope: str) -> dict[str, Any]:
    """Only the claims the scope covers, and only those with a value (OIDC Core 5.3.2)."""
    wanted = claims_for(scope) | {"sub"}
    return {k: v for k, v in all_claims(account).items() if k in wanted and v is not None}


def granted_claims(account: Account, scope: str) -> dict[str, Any]:
    """Every claim of the granted scopes, null when it has no value, and nothing else: what a
    member service may know of the person (profile API and sync deliveries)."""
    wanted = claims_for(scope) | {"sub"}
    return {k: v for k, v in all_claims(account).items() if k in wanted}
