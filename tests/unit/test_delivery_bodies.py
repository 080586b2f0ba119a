"""A delivery's message id and body, built on the worker's hot path without the standard
library's UUID objects and JSON encoder, are what those would make: receivers deduplicate on the
id (the same for every retry of one delivery, across worker versions) and verify the body."""

from __future__ import annotations

import json
import uuid

import pytest

from schemas.events import ProfileUpdated
from sync.deliver import UPDATED, message_id, render

NAMESPACE = uuid.UUID("6f1d2c4e-8b1a-4c55-9a57-0e5b7a1c9d11")


@pytest.mark.parametrize("ids", [(1, 0, 1), (42, 7, 3), (2**62, 2**31 - 1, 2**31 - 1), (987654321, 12, 100000)])
def test_a_message_id_is_the_name_based_uuid_of_its_delivery_generation_and_version(ids: tuple[int, int, int]) -> None:
    delivery_id, generation, version = ids
    made = message_id(delivery_id, generation, version)
    assert made == str(uuid.uuid5(NAMESPACE, f"{delivery_id}:{generation}:{version}"))
    assert uuid.UUID(made).version == 5 and uuid.UUID(made).variant == uuid.RFC_4122


@pytest.mark.parametrize(
    "name", ["Zoë Ørsted", "名前", "tab\there, quote\" and backslash\\", "emoji 🙂", "\u2028 line separator", "lone \ud800 surrogate"]
)
def test_a_body_is_the_compact_json_of_its_event(name: str) -> None:
    data = {
        "sub": "s-1", "version": 3, "changed": ["given_name", "name"],
        "profile": {"sub": "s-1", "given_name": name, "email_verified": True, "address": {"country": "GB"}, "birthdate": None},
        "origin": {"channel": "support", "this_service": False},
    }
    body = render(UPDATED, "id-1", "2026-12-06T10:00:00.000Z", data)
    expected = {"type": UPDATED, "id": "id-1", "timestamp": "2026-12-06T10:00:00.000Z", "data": data}
    assert json.loads(body) == expected
    if "\ud800" not in name:
        assert body == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
        assert ProfileUpdated.model_validate_json(body).data.sub == "s-1"
