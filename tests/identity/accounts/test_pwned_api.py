"""The Pwned Passwords range API check against a local stand-in: k-anonymity, padding, and
failing open (the offline list alone) whenever the API gives no usable answer."""

from __future__ import annotations

import logging
import socket

import pytest

from identity.accounts.pwned_api import range_api
from identity.settings import Settings
from tests.pwned_range import RangeStandIn, sha1

STRONG = "lantern quiver mosaic tundra"


def settings(url: str, timeout: float = 10.0) -> Settings:
    return Settings(breached_password_api=True, breached_password_api_url=url, breached_password_api_timeout=timeout)


async def seen(url: str, password: str, timeout: float = 10.0) -> bool:
    async with range_api(settings(url, timeout)) as api:
        assert api is not None
        return await api.seen(password)


async def test_a_password_the_api_lists_is_seen_and_only_its_hash_prefix_is_sent(pwned_range: RangeStandIn) -> None:
    pwned_range.breach(STRONG)
    assert await seen(pwned_range.url, STRONG) is True

    (request,) = pwned_range.requests
    digest = sha1(STRONG)
    assert request.prefix == digest[:5]
    assert request.path == f"/range/{digest[:5]}"
    assert request.headers["Add-Padding"] == "true"
    assert request.headers["Accept-Encoding"] == "identity"
    assert digest[5:] not in str(request) and STRONG not in str(request)


async def test_a_password_the_api_does_not_list_is_not_seen(pwned_range: RangeStandIn) -> None:
    pwned_range.breach("some other passphrase entirely")
    assert await seen(pwned_range.url, STRONG) is False
    assert len(pwned_range.requests) == 1


async def test_padding_lines_seen_zero_times_do_not_count(pwned_range: RangeStandIn) -> None:
    pwned_range.breach(STRONG, count=0)
    assert await seen(pwned_range.url, STRONG) is False


async def test_no_api_unless_the_operator_enables_it() -> None:
    async with range_api(Settings()) as api:
        assert api is None


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("garbage", "not a list of SUFFIX:COUNT lines"),
        ("status", "status 503"),
        ("redirect", "status 302"),
        ("huge", "over the size limit"),
        ("gzip", "a compressed answer"),
    ],
)
async def test_an_unusable_answer_fails_open(
    pwned_range: RangeStandIn, behaviour: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    pwned_range.breach(STRONG)
    pwned_range.behaviour = behaviour  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="identity.accounts.pwned_api"):
        assert await seen(pwned_range.url, STRONG) is False
    assert len(pwned_range.requests) == 1
    (record,) = caplog.records
    assert "only the offline list was checked" in record.getMessage() and reason in record.getMessage()
    assert sha1(STRONG)[:5] not in record.getMessage() and STRONG not in record.getMessage()


async def test_a_hanging_api_fails_open_after_the_timeout(pwned_range: RangeStandIn, caplog: pytest.LogCaptureFixture) -> None:
    pwned_range.breach(STRONG)
    pwned_range.behaviour = "hang"
    with caplog.at_level(logging.WARNING, logger="identity.accounts.pwned_api"):
        assert await seen(pwned_range.url, STRONG, timeout=0.2) is False
    assert pwned_range.received.is_set()
    assert "timed out" in caplog.text


async def test_an_unreachable_api_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/range/"
        with caplog.at_level(logging.WARNING, logger="identity.accounts.pwned_api"):
            assert await seen(url, STRONG) is False
    assert "only the offline list was checked" in caplog.text


@pytest.mark.parametrize("url", ["http://api.example.com/range/", "ftp://127.0.0.1/range/", "https://api.example.com/range/?x=1"])
def test_the_base_url_must_be_https_outside_loopback(url: str) -> None:
    from identity.settings import ConfigurationError, load_settings

    with pytest.raises(ConfigurationError, match="ONESIGNIN_BREACHED_PASSWORD_API_URL"):
        load_settings(breached_password_api_url=url)
