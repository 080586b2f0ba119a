"""Which address throttling counts against: the peer, or behind trusted proxies the address the
nearest trusted proxy saw, never one a client wrote into X-Forwarded-For itself."""

from __future__ import annotations

from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from identity.appkeys import SETTINGS
from identity.pages.common import client_address
from identity.settings import ConfigurationError, Settings, load_settings


def _address(peer: str, forwarded: list[str], trusted: list[str]) -> str:
    app = web.Application()
    app[SETTINGS] = Settings(secret_key="s" * 40, trusted_proxies=trusted)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 40000) if name == "peername" else default
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    return client_address(make_mocked_request("POST", "/sign-in", headers=headers, app=app, transport=transport))


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        # No trusted proxies: the header is ignored.
        ("203.0.113.9", ["198.51.100.1"], [], "203.0.113.9"),
        # A peer that is not a trusted proxy cannot choose its address.
        ("203.0.113.9", ["198.51.100.1"], ["10.0.0.0/8"], "203.0.113.9"),
        # Behind one trusted proxy: the address it saw.
        ("10.0.0.5", ["198.51.100.1"], ["10.0.0.0/8"], "198.51.100.1"),
        # The client wrote a fake entry first; the proxy appended the real one.
        ("10.0.0.5", ["1.2.3.4, 198.51.100.1"], ["10.0.0.0/8"], "198.51.100.1"),
        # Two trusted proxies, one header line each.
        ("10.0.0.5", ["198.51.100.1", "10.0.0.7"], ["10.0.0.0/8"], "198.51.100.1"),
        # Garbage where the client's address should be: the last trusted hop is kept.
        ("10.0.0.5", ["not-an-address"], ["10.0.0.0/8"], "10.0.0.5"),
        # A trusted proxy that sent no header.
        ("10.0.0.5", [], ["10.0.0.0/8"], "10.0.0.5"),
        ("2001:db8::1", ["2001:db8:ffff::9"], ["2001:db8::1"], "2001:db8:ffff::9"),
    ],
)
def test_client_address(peer: str, forwarded: list[str], trusted: list[str], expected: str) -> None:
    assert _address(peer, forwarded, trusted) == expected


def test_a_bad_trusted_proxy_is_named_at_start() -> None:
    with pytest.raises(ConfigurationError, match="ONESIGNIN_TRUSTED_PROXIES"):
        load_settings(secret_key="s" * 40, trusted_proxies=["10.0.0.0/8", "proxy.example"])
