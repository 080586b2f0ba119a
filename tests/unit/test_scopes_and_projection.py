"""What a service may see: scopes to claims, the claims of an account a scope releases, and the
compact "which claims changed" kept on a delivery. Pure rules, no database."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from identity.accounts.claims import granted_claims, user_claims
from identity.oidc.scopes import SCOPE_CLAIMS, SCOPE_DESCRIPTIONS, claims_for, join, split
from sync import projection


def account(**changes: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "sub": "s-1", "name": "Ada Lovelace", "given_name": "Ada", "family_name": "Lovelace",
        "birthdate": dt.date(1990, 12, 10), "locale": "en-GB", "zoneinfo": "Europe/London",
        "updated_at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "email": "ada@example.org",
        "email_verified": True, "phone_number": None, "address": None, "marketing_news": True,
        "marketing_competitions": False, "marketing_offers": False,
    }
    return SimpleNamespace(**(values | changes))


def test_split_keeps_the_first_of_each_scope_in_order() -> None:
    assert split("openid  email openid profile") == ["openid", "email", "profile"]
    assert split(None) == [] and split("") == []


def test_join_orders_known_scopes_as_declared_and_unknown_ones_last() -> None:
    assert join({"email", "zzz", "openid", "aaa"}) == "openid email aaa zzz"


def test_claims_for_is_the_union_of_the_scopes_and_ignores_unknown_ones() -> None:
    assert claims_for("openid email") == {"sub", "email", "email_verified"}
    assert claims_for("openid nonsense") == {"sub"}
    assert claims_for("offline_access export") == frozenset()


def test_every_scope_has_plain_words() -> None:
    assert set(SCOPE_DESCRIPTIONS) == set(SCOPE_CLAIMS)


def test_user_claims_leave_out_what_has_no_value_and_what_was_not_granted() -> None:
    claims = user_claims(account(), "openid email phone")
    assert claims == {"sub": "s-1", "email": "ada@example.org", "email_verified": True}


def test_granted_claims_name_every_granted_claim_even_without_a_value() -> None:
    claims = granted_claims(account(), "openid phone")
    assert claims == {"sub": "s-1", "phone_number": None, "phone_number_verified": None}
    assert "email" not in claims and "name" not in claims


def test_a_date_of_birth_is_an_iso_date_and_updated_at_epoch_seconds() -> None:
    claims = granted_claims(account(), "openid profile")
    assert claims["birthdate"] == "1990-12-10"
    assert claims["updated_at"] == int(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp())


def test_changed_claims_round_trip_through_their_bits() -> None:
    changed = ["family_name", "email", "marketing_offers"]
    assert projection.names(projection.mask(changed)) == ["email", "family_name", "marketing_offers"]
    assert projection.mask(["not-a-claim"]) == 0


def test_a_service_is_told_only_of_changes_to_claims_it_may_see() -> None:
    changed = projection.mask(["email", "phone_number", "given_name"])
    assert projection.names(changed & projection.visible_mask("openid email")) == ["email"]
    assert projection.names(changed & projection.visible_mask("openid")) == []


def test_claim_bits_are_append_only_positions() -> None:
    # Stored in deliveries.changed: a claim's bit must never move.
    assert projection.CLAIM_BITS[:3] == ("email", "email_verified", "name")
    assert len(set(projection.CLAIM_BITS)) == len(projection.CLAIM_BITS)
