"""When a rights request must be answered: one calendar month after receipt, or, once
extended, three calendar months after receipt (the month plus two further months, GDPR
Art. 12(3)). A month runs to the same day of the next month; when that month is shorter, to
its last day (31 January -> 28 or 29 February)."""

from __future__ import annotations

import calendar
import datetime as dt

#: Months from receipt to the deadline, before and after the one extension.
FIRST_PERIOD = 1
EXTENDED_PERIOD = 3


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """``moment`` moved ``months`` calendar months on, the day clamped to the month's end."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def due_at(received_at: dt.datetime) -> dt.datetime:
    return add_months(received_at, FIRST_PERIOD)


def extended_due_at(received_at: dt.datetime) -> dt.datetime:
    return add_months(received_at, EXTENDED_PERIOD)
