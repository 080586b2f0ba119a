"""Masking in the support console, rights requests' deadlines and steps, and the service tokens'
format. Pure rules, no database."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from identity.oidc.service_tokens import PREFIX, ServiceTokenCodec
from identity.rights.deadlines import add_months, due_at, extended_due_at
from identity.rights.lifecycle import CLOSED, NEEDS_REASON, OPEN, allowed
from identity.support.masking import DOT, format_address, mask_address, mask_birthdate, mask_phone, shown

ADDRESS = {"street_address": "1 Main St", "locality": "Bath", "postal_code": "BA1", "country": "GB"}


def test_masks_show_only_a_small_tail() -> None:
    assert mask_birthdate(dt.date(1990, 12, 7)) == f"{DOT * 4}-{DOT * 2}-07"
    assert mask_phone("+441234567823") == "+" + DOT * 10 + "23"
    assert mask_phone("0712") == DOT * 2 + "12"
    assert mask_address(ADDRESS) == ", ".join([DOT * 4] * 3 + ["GB"])
    assert mask_birthdate(None) is None and mask_phone("") is None and mask_address({}) is None


def test_revealed_fields_are_shown_whole_and_the_others_stay_masked() -> None:
    person = SimpleNamespace(birthdate=dt.date(1990, 12, 7), phone_number="+4411", address=ADDRESS)
    view = shown(person, {"address"})
    assert view["address"] == "1 Main St, Bath, BA1, GB" == format_address(ADDRESS)
    assert view["birthdate"] == mask_birthdate(person.birthdate)
    assert view["phone_number"] == mask_phone("+4411")
    assert format_address({"formatted": "Somewhere", "country": "GB"}) == "Somewhere"


def at(year: int, month: int, day: int) -> dt.datetime:
    return dt.datetime(year, month, day, 12, 0, tzinfo=dt.UTC)


def test_a_month_runs_to_the_same_day_or_the_last_day_of_a_shorter_month() -> None:
    assert due_at(at(2026, 3, 15)) == at(2026, 4, 15)
    assert due_at(at(2026, 1, 31)) == at(2026, 2, 28)
    assert due_at(at(2028, 1, 31)) == at(2028, 2, 29)
    assert due_at(at(2026, 12, 20)) == at(2027, 1, 20)
    assert extended_due_at(at(2026, 11, 30)) == at(2027, 2, 28)
    assert add_months(at(2026, 5, 31), 0) == at(2026, 5, 31)


def test_rights_request_steps() -> None:
    assert allowed("received", "acknowledged") and allowed("acknowledged", "extended")
    assert not allowed("extended", "extended"), "one extension at most"
    assert not allowed("extended", "acknowledged")
    for closed in CLOSED:
        assert not any(allowed(closed, target) for target in ("acknowledged", "extended", "completed", "refused"))
    assert not allowed("unknown", "completed")
    assert OPEN.isdisjoint(CLOSED) and NEEDS_REASON == {"extended", "refused"}


NOW = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)


def test_a_service_token_reads_back_what_was_issued() -> None:
    codec = ServiceTokenCodec("k" * 40)
    token = codec.issue("store", "sync:read", 300, NOW)
    assert token.startswith(PREFIX)
    read = codec.read(token)
    assert read is not None
    assert (read.client_id, read.scope, read.issued_at, read.expires_at) == ("store", "sync:read", NOW, NOW + dt.timedelta(seconds=300))
    assert codec.read(codec.issue("store", "sync:read", 300, NOW)).token_id != read.token_id


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # another MAC
        lambda t: t.replace(PREFIX, "xyz.", 1),  # not ours
        lambda t: t.split(".")[0] + "." + t.split(".")[1],  # no MAC
        lambda t: t + "x" * 2100,  # oversized
    ],
)
def test_a_tampered_or_foreign_token_is_not_read(tamper) -> None:  # type: ignore[no-untyped-def]
    codec = ServiceTokenCodec("k" * 40)
    assert codec.read(tamper(codec.issue("store", "s", 60, NOW))) is None


def test_a_token_of_another_hub_is_not_read() -> None:
    token = ServiceTokenCodec("a" * 40).issue("store", "s", 60, NOW)
    assert ServiceTokenCodec("b" * 40).read(token) is None
