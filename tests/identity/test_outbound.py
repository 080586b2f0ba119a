"""The outbound HTTP policy (``identity.outbound``) every call to a service's address goes
through: public addresses only unless the operator allows a network, checked on the address
connected to; a bounded, undecoded read of any answer."""

from __future__ import annotations

import ipaddress
from typing import Literal

import aiohttp
import pytest

from identity import outbound
from identity.settings import ConfigurationError, Settings, load_settings
from tests.hostile import IN_FLIGHT_BOUND, HostileEndpoint, Listener

REFUSED = [
    "127.0.0.1", "127.1.2.3", "::1",  # loopback
    "10.0.0.1", "172.16.5.4", "192.168.1.1", "fd12:3456::1", "fc00::1",  # private, ULA
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "169.254.169.254", "fd00:ec2::254", "169.254.1.1", "fe80::1",  # link-local, cloud metadata
    "224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",  # multicast
    "0.0.0.0", "::",  # unspecified
    "240.0.0.1", "255.255.255.255",  # reserved, broadcast
    "192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1", "3fff::1",  # documentation
    "198.18.0.1", "192.0.0.8",  # benchmarking, IETF protocol assignments
    "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:7f00:1::1", "2002:a9fe:a9fe::1",  # 6to4 around loopback and the metadata address
    "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b:1::1",  # NAT64 to the same, local-use NAT64
    "fec0::1",  # site-local
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:81c::200e", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not outbound.is_public(ipaddress.ip_address(address))
    assert not outbound.Policy().allows(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_reachable(address: str) -> None:
    assert outbound.Policy().allows(address)


def test_an_allowance_opens_its_networks_and_nothing_else() -> None:
    policy = outbound.Policy.of(Settings(secret_key="s" * 40, outbound_allowed_networks=["127.0.0.0/8", "10.20.0.0/16"]))
    for allowed in ("127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1", "10.20.3.4"):
        assert policy.allows(allowed), allowed
    for refused in ("::1", "10.21.0.1", "169.254.169.254", "192.168.0.1", "not an address"):
        assert not policy.allows(refused), refused


def test_the_setting_is_read_from_the_environment_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(secret_key="s" * 40).outbound_networks == ()
    monkeypatch.setenv("ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS", '["10.20.0.0/16", " fd00:1::/64 "]')
    assert load_settings(secret_key="s" * 40).outbound_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00:1::/64"),
    )
    monkeypatch.setenv("ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS", '["10.20.0.0/16", "intranet.example"]')
    with pytest.raises(ConfigurationError, match="ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS: .*'intranet.example' is not an IP address or network"):
        load_settings(secret_key="s" * 40)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_a_refused_address_is_never_connected_to(host: str) -> None:
    async with Listener() as listener, outbound.client(Settings(secret_key="s" * 40), user_agent="test") as http:
        with pytest.raises(outbound.AddressNotAllowed) as refused:
            await outbound.post(http, listener.url(host), data=b"{}", timeout=aiohttp.ClientTimeout(total=10))
        assert "127.0.0.1" not in str(refused.value) and str(listener.port) not in str(refused.value)
        assert await listener.connections_before_now() == 0


@pytest.mark.parametrize("body", ["endless", "gzip"])
async def test_an_answer_is_read_a_few_kilobytes_in_and_never_decoded(body: Literal["endless", "gzip"]) -> None:
    settings = Settings(secret_key="s" * 40, outbound_allowed_networks=["127.0.0.0/8"])
    async with HostileEndpoint(body) as endpoint, outbound.client(settings, user_agent="test") as http:
        answer = await outbound.post(http, endpoint.url, data=b"{}", timeout=aiohttp.ClientTimeout(total=60))
        assert answer.status == 200
        assert 0 < len(answer.body) <= outbound.MAX_ANSWER_BYTES
        if body == "gzip":
            assert answer.headers["Content-Encoding"] == "gzip"
            assert answer.body.startswith(b"\x1f\x8b")  # as it came: not expanded
        attempt = await endpoint.first()
    assert attempt.headers["accept-encoding"] == "identity"
    # The sender closed the connection while the answer was still coming, having let through
    # no more than its buffers hold.
    assert attempt.written <= IN_FLIGHT_BOUND
    if body == "endless":
        assert attempt.cut_off
