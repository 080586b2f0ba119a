"""Shared Signals' pure rules: what a stream's configuration may be, what it delivers, what a
poll request says, and a SET's signature and claims (no hub, no database)."""

from __future__ import annotations

import datetime as dt

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from identity.oidc.keys import KeyRing
from identity.ssf import events, poll, sets, streams
from identity.ssf.streams import POLL, PUSH, StreamError

AT = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.UTC)


def test_events_delivered_are_those_requested_and_supported() -> None:
    asked = [events.ACCOUNT_PURGED, "https://example.com/other", events.SESSION_REVOKED, events.VERIFICATION]
    assert events.delivered(asked) == [events.SESSION_REVOKED, events.ACCOUNT_PURGED]


def test_a_push_stream_needs_an_http_endpoint_and_a_new_stream_without_delivery_is_polled() -> None:
    want = streams.wanted({"delivery": {"method": PUSH, "endpoint_url": "https://rp.example/ssf", "authorization_header": "Bearer x"}})
    assert (want.method, want.endpoint_url, want.authorization_header) == (PUSH, "https://rp.example/ssf", "Bearer x")
    assert streams.wanted({}).method == POLL
    polled = streams.wanted({"delivery": {"method": POLL, "endpoint_url": "https://ignored.example"}})
    assert (polled.endpoint_url, polled.authorization_header) == (None, None)
    for bad in (
        {"delivery": {"method": PUSH}},
        {"delivery": {"method": PUSH, "endpoint_url": "ftp://rp.example/x"}},
        {"delivery": {"method": PUSH, "endpoint_url": "http://rp.example/x"}},
        {"delivery": {"method": "urn:example:smoke-signals"}},
        {"delivery": {"method": PUSH, "endpoint_url": "https://rp.example/ssf", "authorization_header": "Bearer x\r\nX-Evil: 1"}},
        {"events_requested": "all"},
        {"events_requested": ["a\x00b"]},
        {"description": "\ud800"},
        # A polled stream's endpoint and header are not used, but must have their documented types.
        {"delivery": {"method": POLL, "endpoint_url": None, "authorization_header": ["Bearer x"]}},
        {"delivery": {"method": POLL, "endpoint_url": 7}},
    ):
        with pytest.raises(StreamError) as refused:
            streams.wanted(bad)
        assert refused.value.status == 400


def test_an_update_keeps_what_it_does_not_name() -> None:
    current = streams.wanted({"delivery": {"method": PUSH, "endpoint_url": "https://rp.example/ssf"}, "events_requested": [events.ACCOUNT_ENABLED]})
    updated = streams.wanted({"description": "Forum"}, current)
    assert (updated.method, updated.endpoint_url, updated.events_requested, updated.description) == (
        PUSH, "https://rp.example/ssf", [events.ACCOUNT_ENABLED], "Forum",
    )


def test_a_poll_request_is_checked_and_bounded() -> None:
    asked = poll.request({"ack": ["a", "b\x00"], "setErrs": {"c": {"err": "invalid_key", "description": "unknown kid"}}, "maxEvents": 1000})
    assert (asked.max_events, asked.return_immediately, asked.acks) == (poll.MAX_EVENTS, False, ["a"])
    assert asked.errors == {"c": "invalid_key: unknown kid"}
    for bad in ({"maxEvents": -1}, {"maxEvents": True}, {"returnImmediately": "yes"}, {"ack": "a"}, {"setErrs": {"c": "bad"}}, []):
        with pytest.raises(StreamError):
            poll.request(bad)


def test_a_set_is_signed_with_the_current_key_and_names_the_issuer() -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"}, private=True)
    ring = KeyRing(published=[key.as_dict(private=False)], signing={"RS256": key})
    event = events.credential_change(AT, "fido2-roaming", "create")
    stored = sets.body(sets.claims(event, client_id="forum", subject={"format": "iss_sub", "sub": "s-1"}, at=AT))
    decoded = jwt.decode(sets.sign(ring, "https://hub.example", stored), KeySet.import_key_set(ring.jwks()), algorithms=["RS256"])
    assert decoded.header == {"alg": "RS256", "kid": "k1", "typ": "secevent+jwt"}
    claims = decoded.claims
    assert claims["iss"] == "https://hub.example" and claims["aud"] == "forum" and claims["iat"] == int(AT.timestamp())
    assert claims["sub_id"] == {"format": "iss_sub", "sub": "s-1", "iss": "https://hub.example"}
    assert claims["events"] == {
        events.CREDENTIAL_CHANGE: {"credential_type": "fido2-roaming", "change_type": "create", "event_timestamp": int(AT.timestamp()), "initiating_entity": "user"}
    }


def test_assurance_goes_up_with_a_first_second_factor_and_down_with_the_last() -> None:
    up = events.assurance_level_change(AT, two_factors=True).payload
    down = events.assurance_level_change(AT, two_factors=False).payload
    assert (up["current_level"], up["previous_level"], up["change_direction"]) == (events.TWO_FACTORS, events.ONE_FACTOR, "increase")
    assert (down["current_level"], down["change_direction"]) == (events.ONE_FACTOR, "decrease")
