"""What a service's SCIM server is told of a person: the User attributes mapped from the claims
the service may see, nothing from the others, and empty claims cleared."""

from __future__ import annotations

import datetime as dt
import json

from scim2_models import User

from identity.accounts.claims import granted_claims
from sync.scim import nested, put_intent, user_attributes


class _Account:
    sub = "2f1e-sub"
    version = 3
    updated_at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    email = "ann@example.com"
    email_verified = True
    name = None
    given_name = "Ann"
    family_name = None
    birthdate = None
    locale = "fr-FR"
    zoneinfo = None
    phone_number = "+33612345678"
    address = {"street_address": "1 rue X", "locality": "Paris", "country": "FR"}
    marketing_news = marketing_competitions = marketing_offers = False


def test_only_the_claims_of_the_granted_scopes_are_mapped_and_empty_ones_cleared() -> None:
    profile = granted_claims(_Account(), "openid profile")
    attributes, clear = user_attributes(profile, "2f1e-sub")
    assert attributes["userName"] == "2f1e-sub"  # no email scope: the sub
    assert attributes["externalId"] == "2f1e-sub" and attributes["active"] is True
    assert attributes["name.givenName"] == "Ann" and attributes["locale"] == "fr-FR"
    assert not {"emails", "phoneNumbers", "addresses"} & attributes.keys()
    assert not {"emails", "phoneNumbers", "addresses"} & set(clear)  # outside the scopes: untouched
    assert {"name.familyName", "timezone"} <= set(clear)


def test_every_scope_maps_to_a_valid_scim_user() -> None:
    profile = granted_claims(_Account(), "openid profile email phone address")
    attributes, _ = user_attributes(profile, "2f1e-sub")
    user = User.model_validate(nested(attributes))
    assert user.user_name == "ann@example.com" and user.emails[0].value == "ann@example.com"
    assert user.phone_numbers[0].value == "+33612345678"
    assert user.addresses[0].street_address == "1 rue X" and user.addresses[0].locality == "Paris"
    assert user.name.given_name == "Ann"


def test_a_change_leaves_active_alone_and_a_link_sets_it() -> None:
    profile = granted_claims(_Account(), "openid profile")
    assert "active" not in json.loads(put_intent(profile, "s", "id-1", activate=False))["user"]
    assert json.loads(put_intent(profile, "s", None, activate=True))["user"]["active"] is True
