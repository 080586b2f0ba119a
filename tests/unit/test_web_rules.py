"""Where a page may send the browser next, and how long a service is asked to wait. Pure rules."""

from __future__ import annotations

import datetime as dt
import email.utils

import pytest

from identity.web.responses import safe_next
from sync.webhooks import MAX_RETRY_AFTER, parse_retry_after


@pytest.mark.parametrize("value", ["/account", "/authorize?client_id=x&scope=openid", "/a/b#c"])
def test_same_site_paths_are_followed(value: str) -> None:
    assert safe_next(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None, "", "account", "https://evil.example/", "//evil.example/x", "/\\evil.example",
        "/\tx", "/a b", "/x\x00", "/x\x7f", "javascript:alert(1)", "///evil.example",
    ],
)
def test_anything_else_goes_to_the_default(value: str | None) -> None:
    assert safe_next(value) == "/account"
    assert safe_next(value, default="/") == "/"


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after(str(10 * 86400)) == MAX_RETRY_AFTER


def test_retry_after_as_an_http_date() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    seconds = parse_retry_after(email.utils.format_datetime(when, usegmt=True))
    assert seconds is not None and 80 <= seconds <= 90


def test_retry_after_in_the_past_is_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5"])
def test_retry_after_that_cannot_be_read_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None
