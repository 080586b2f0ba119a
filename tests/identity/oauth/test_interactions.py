"""When an authorization request must send the person (back) to sign in: the rule the endpoint
and the interaction page share, read without HTTP."""

from __future__ import annotations

import datetime as dt

from identity.db.models import Interaction, utcnow
from identity.oidc import interactions
from identity.oidc.interactions import Decision, needs_sign_in


def test_no_session_needs_a_sign_in() -> None:
    assert needs_sign_in(None, set(), None, Decision())


def test_prompt_login_needs_a_sign_in_unless_the_person_signed_in_since_the_interaction_began() -> None:
    started = utcnow()
    assert needs_sign_in(started - dt.timedelta(minutes=1), {"login"}, None, Decision(fresh_since=started))
    assert not needs_sign_in(started + dt.timedelta(seconds=1), {"login"}, None, Decision(fresh_since=started))


def test_max_age_counts_from_the_sign_in_and_ignores_what_is_not_a_number() -> None:
    an_hour_ago = utcnow() - dt.timedelta(hours=1)
    assert needs_sign_in(an_hour_ago, set(), "60", Decision())
    assert not needs_sign_in(an_hour_ago, set(), "7200", Decision())
    assert not needs_sign_in(an_hour_ago, set(), "-1", Decision())


def test_a_consent_decision_is_read_back_and_asking_again_withdraws_it() -> None:
    row = Interaction(params={"uid": "u", "query": [["prompt", "consent"]], "client_id": "c", "scope": "openid"}, created_at=utcnow())
    assert interactions.decision(row) == Decision(fresh_since=row.created_at)
    interactions.finish_consent(row, allowed=True)
    assert interactions.decision(row).consented and not interactions.decision(row).denied
    assert interactions.ask_again(row) == "u" and not interactions.decision(row).consented
    interactions.finish_consent(row, allowed=False)
    assert interactions.decision(row).denied
    assert interactions.details(row).prompts == {"consent"} and interactions.query(row) == [("prompt", "consent")]
