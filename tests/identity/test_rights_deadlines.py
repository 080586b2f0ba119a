"""When a rights request is due: one calendar month after receipt, clamped to the month's end,
and three months after receipt once extended; and which steps a request may take."""

from __future__ import annotations

import datetime as dt

import pytest

from identity.rights import NEXT, due_at, extended_due_at
from identity.rights.lifecycle import allowed


def at(y: int, m: int, d: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(y, m, d, hour, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("received", "due", "extended"),
    [
        (at(2026, 11, 26), at(2026, 12, 26), at(2027, 2, 26)),
        (at(2026, 12, 15), at(2027, 1, 15), at(2027, 3, 15)),  # over the year's end
        (at(2027, 1, 31), at(2027, 2, 28), at(2027, 4, 30)),  # February is short; April has 30
        (at(2028, 1, 31), at(2028, 2, 29), at(2028, 4, 30)),  # a leap year
        (at(2027, 3, 31), at(2027, 4, 30), at(2027, 6, 30)),
        (at(2026, 11, 30), at(2026, 12, 30), at(2027, 2, 28)),
        (at(2027, 8, 31), at(2027, 9, 30), at(2027, 11, 30)),
        (at(2027, 10, 31), at(2027, 11, 30), at(2028, 1, 31)),
    ],
)
def test_due_one_calendar_month_after_receipt_and_three_once_extended(
    received: dt.datetime, due: dt.datetime, extended: dt.datetime
) -> None:
    assert due_at(received) == due
    assert extended_due_at(received) == extended
    # The time of day is kept: due at the same moment of the day it was received.
    assert due_at(received).time() == received.time()


def test_the_allowed_steps() -> None:
    assert NEXT["received"] == {"acknowledged", "extended", "completed", "refused"}
    assert NEXT["acknowledged"] == {"extended", "completed", "refused"}
    assert NEXT["extended"] == {"completed", "refused"}
    assert not NEXT["completed"] and not NEXT["refused"]
    assert not allowed("extended", "extended")  # extended once only
    assert not allowed("extended", "acknowledged")
    assert not allowed("acknowledged", "received")
    assert not allowed("completed", "refused")
    assert not allowed("nonsense", "completed")
