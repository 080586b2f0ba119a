"""Outbound HTTP: the one client policy for every request the hub and its sync workers make to
an address a member service registered (profile deliveries and notices to its webhook,
back-channel logout, the JWK Set at its jwks_uri). Such an address is chosen by someone outside, so the hub treats both
where it leads and what comes back as hostile.

* **Public addresses only.** Every connection is checked after name resolution: the resolver
  drops the addresses a name resolves to that are not on the public internet, and the socket
  factory checks the address each socket is about to connect to (IP literals never reach a
  resolver). The check is on the address actually connected to, so a name whose DNS answer
  changes between two lookups cannot lead anywhere else. Refused: loopback, private (RFC 1918,
  ULA), shared (RFC 6598), link-local (with the cloud metadata endpoints 169.254.169.254 and
  fd00:ec2::254), multicast, unspecified, reserved, documentation and benchmarking ranges, and
  IPv6 forms that embed one of those (IPv4-mapped, 6to4, NAT64). ``ONESIGNIN_OUTBOUND_ALLOWED_NETWORKS``
  lets an operator allow networks of their own (a private network the services live on, or
  loopback in development).
* **A bounded answer.** Only the status and headers of an answer matter. At most
  :data:`MAX_ANSWER_BYTES` of its body are read, undecoded: the request asks for
  ``Accept-Encoding: identity`` and the session never decompresses (a small gzip answer can
  expand a thousandfold). When more was coming, the connection is closed rather than read on.
  Headers are capped too (:data:`MAX_HEADERS`, :data:`MAX_FIELD_SIZE`).
* **No redirects, no proxies from the environment.** A redirect would be an answer's choice of
  where the hub goes next.

``client`` makes the session; :func:`post` is the one way to send through it, :func:`get`
the one way to fetch (with a limit of the caller's, for a body that is used: a JWK Set), and
:func:`call` the one way to speak a JSON protocol whose answers are read (a service's SCIM
server), with the same limit of the caller's.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDictProxy

from identity.settings import Settings

__all__ = ["MAX_ANSWER_BYTES", "AddressNotAllowed", "Answer", "Fetched", "Policy", "call", "client", "get", "is_public", "post"]

#: The most of an answer's body that is read (it is only ever looked at for a log line).
MAX_ANSWER_BYTES = 4096
#: Header limits of an answer: at most this many fields, each line at most this long.
MAX_HEADERS = 64
MAX_FIELD_SIZE = 8190
#: Bytes the client buffers from the socket ahead of the reader (aiohttp pauses reading at twice this).
READ_BUFFER = 16 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Special-purpose blocks (IANA registries) that are not globally reachable, which older
#: releases of Python's ``ipaddress`` count as global.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressNotAllowed(OSError):
    """A connection was refused by the outbound policy: the address is not public, nor in the
    operator's allowed networks. Its message names no address (it may reach a service)."""

    def __init__(self) -> None:
        super().__init__(errno.EACCES, "address not allowed by the hub's outbound policy")


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is on the public internet (and so needs no allowance)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.is_site_local:
            return False
    return (
        address.is_global
        and not address.is_private
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_multicast
        and not address.is_unspecified
        and not address.is_reserved
        and not any(address in n for n in _NOT_GLOBAL if n.version == address.version)
    )


@dataclass(frozen=True)
class Policy:
    """Which addresses outbound connections may reach: public ones, and ``allowed`` networks."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(settings.outbound_networks)

    def allows(self, host: str) -> bool:
        """``host`` is an IP address as a resolver or a socket address gives it."""
        try:
            address: IPAddress = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # where the kernel connects to
        return is_public(address) or any(address in n for n in self.allowed if n.version == address.version)

    def socket(self, addr_info: AddrInfoType) -> socket.socket:
        """The socket for one address about to be connected to (aiohttp's ``socket_factory``):
        the last check, on exactly the address the connection goes to."""
        family, type_, proto, _, address = addr_info
        if not self.allows(str(address[0])):
            raise AddressNotAllowed()
        return socket.socket(family=family, type=type_, proto=proto)


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses the policy allows (what it returns is
    what the connector caches and connects to)."""

    def __init__(self, policy: Policy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        kept = [r for r in found if self.policy.allows(r["host"])]
        if not kept:
            raise AddressNotAllowed()
        return kept

    async def close(self) -> None:
        await self.inner.close()


@contextlib.asynccontextmanager
async def client(
    settings: Settings, *, user_agent: str, limit: int = 100, keepalive_timeout: float = 15.0
) -> AsyncIterator[aiohttp.ClientSession]:
    """The session for outbound calls to services' addresses, closed on exit. ``limit`` caps
    its connections (0: none)."""
    policy = Policy.of(settings)
    resolver = CheckedResolver(policy)
    connector = aiohttp.TCPConnector(
        resolver=resolver,
        socket_factory=policy.socket,
        limit=limit,
        limit_per_host=0,
        keepalive_timeout=keepalive_timeout,
    )
    try:
        async with aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
            auto_decompress=False,
            trust_env=False,
            # Calls to services are stateless: no cookie a service sets is kept or sent back.
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFFER,
            max_headers=MAX_HEADERS,
            max_field_size=MAX_FIELD_SIZE,
            max_line_size=MAX_FIELD_SIZE,
        ) as http:
            yield http
    finally:
        await resolver.close()


@dataclass(frozen=True)
class Answer:
    """What an outbound call came to: the status, the headers, and at most
    :data:`MAX_ANSWER_BYTES` of the body as it came (undecoded)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


async def post(
    http: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes | Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """POST ``data`` to ``url`` through a :func:`client` session; never follows a redirect.

    Raises :class:`AddressNotAllowed` when the policy refused every address of ``url``,
    ``TimeoutError`` past ``timeout``, and ``aiohttp.ClientError`` (or ``OSError``) when the
    request failed otherwise."""
    try:
        async with http.post(url, data=data, headers=headers, timeout=timeout, allow_redirects=False) as response:
            body = await _prefix(response.content, MAX_ANSWER_BYTES)
            if not response.content.at_eof():
                # More was coming: drop the connection rather than read the rest.
                response.close()
            return Answer(response.status, response.headers, body)
    except aiohttp.ClientConnectorError as exc:
        if _refused(exc):
            raise AddressNotAllowed() from None
        raise


async def _prefix(content: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _refused(exc: aiohttp.ClientConnectorError) -> bool:
    """Whether the connector failed because the policy refused the address (aiohttp wraps what
    the resolver or the socket factory raised)."""
    return isinstance(exc.os_error, AddressNotAllowed) or isinstance(exc.__cause__, AddressNotAllowed)


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout: aiohttp.ClientTimeout,
    limit: int,
    json_body: object = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Fetched:
    """Any ``method`` to ``url`` through a :func:`client` session, with an optional JSON body,
    reading at most ``limit`` bytes of the answer; never follows a redirect. Raises like
    :func:`post`."""
    data = None if json_body is None else json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        async with http.request(
            method, url, data=data, params=params, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            body = await _prefix(response.content, limit)
            complete = response.content.at_eof() or not await response.content.read(1)
            if not complete:
                response.close()
            return Fetched(response.status, body, complete, response.headers)
    except aiohttp.ClientConnectorError as exc:
        if _refused(exc):
            raise AddressNotAllowed() from None
        raise


@dataclass(frozen=True)
class Fetched:
    """A GET's status and body, read whole up to the caller's limit (``complete`` says whether
    it fit)."""

    status: int
    body: bytes
    complete: bool
    headers: CIMultiDictProxy[str] | None = None


async def get(http: aiohttp.ClientSession, url: str, *, timeout: aiohttp.ClientTimeout, limit: int) -> Fetched:
    """GET ``url`` through a :func:`client` session, reading at most ``limit`` bytes of the
    body; never follows a redirect. Raises like :func:`post`."""
    try:
        async with http.get(url, timeout=timeout, allow_redirects=False) as response:
            body = await _prefix(response.content, limit)
            complete = response.content.at_eof() or not await response.content.read(1)
            if not complete:
                response.close()
            return Fetched(response.status, body, complete)
    except aiohttp.ClientConnectorError as exc:
        if _refused(exc):
            raise AddressNotAllowed() from None
        raise
