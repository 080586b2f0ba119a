"""Endpoints that answer as no well-behaved service does, over real HTTP: a body that never ends,
or a gzip bomb. Each answers ``200`` at once (so the status is all a sender needs) and then keeps
writing until the sender closes the connection, recording what it saw of each request and how
much it wrote before that."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiohttp import web
from aiohttp.test_utils import TestServer


def _sysctl(path: str, default: int) -> int:
    try:
        return int(Path(path).read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return default


#: The most a sender that stopped reading can have let through before its close reached the
#: endpoint: its socket's receive buffer and the endpoint's send buffer, each at most the
#: kernel's ceiling, plus a margin for both ends' userspace buffers. Nothing to do with time.
IN_FLIGHT_BOUND = _sysctl("/proc/sys/net/ipv4/tcp_rmem", 6 << 20) + _sysctl("/proc/sys/net/ipv4/tcp_wmem", 4 << 20) + (1 << 20)
#: What an endless body writes at most, well past that bound: a sender that reads everything
#: (a regression) gets this much and then a body that never ends, rather than all its memory.
ENDLESS_CAP = 2 * IN_FLIGHT_BOUND
#: What a gzip bomb expands to at most (about a thousandth of it is written).
BOMB_CAP = 256 << 20

_CHUNK = 64 << 10
_ZEROS = bytes(1 << 20)


def _bomb() -> tuple[bytes, bytes]:
    """A gzip stream of zeros, flushed after each MiB: its first piece (with the gzip header)
    and the piece every further MiB compresses to (the same bytes each time, so it is made once)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first, steady, again = (deflate.compress(_ZEROS) + deflate.flush(zlib.Z_SYNC_FLUSH) for _ in range(3))
    assert steady == again
    return first, steady


_BOMB_FIRST, _BOMB_STEADY = _bomb()


@dataclass
class Attempt:
    """One request the endpoint answered."""

    headers: dict[str, str]
    #: Body bytes handed to the connection before the sender closed it.
    written: int = 0
    #: The sender closed the connection while the body was still being written.
    cut_off: bool = False
    #: Set once the sender has closed the connection (the body never ends by itself).
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class HostileEndpoint:
    """A POST endpoint at :attr:`url` answering ``200`` with ``body``: ``endless`` (plain bytes,
    for ever) or ``gzip`` (``Content-Encoding: gzip``, a stream of compressed zeros).

    Either way the body is never finished: after :data:`ENDLESS_CAP` bytes (or
    :data:`BOMB_CAP` expanded ones) the endpoint stops writing and waits for the sender to close
    the connection."""

    def __init__(self, body: Literal["endless", "gzip"]) -> None:
        self.body = body
        self.attempts: list[Attempt] = []
        self.arrived = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._answer)
        # A handler is cancelled when its connection closes: that is how a closed wait ends.
        self.server = TestServer(app, host="127.0.0.1", handler_cancellation=True)

    async def __aenter__(self) -> HostileEndpoint:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))

    async def first(self, timeout: float = 30.0) -> Attempt:
        """The first request, once the sender has closed its connection."""
        await asyncio.wait_for(self.arrived.wait(), timeout)
        attempt = self.attempts[0]
        await asyncio.wait_for(attempt.closed.wait(), timeout)
        return attempt

    def _chunks(self) -> Iterator[bytes]:
        if self.body == "endless":
            while True:
                yield b"x" * _CHUNK
        yield _BOMB_FIRST
        while True:
            yield _BOMB_STEADY

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        attempt = Attempt({k.lower(): v for k, v in request.headers.items()})
        self.attempts.append(attempt)
        self.arrived.set()
        await request.read()
        headers = {"Content-Type": "text/plain"} | ({"Content-Encoding": "gzip"} if self.body == "gzip" else {})
        response = web.StreamResponse(status=200, headers=headers)
        writing = True
        try:
            await response.prepare(request)
            expanded = 0
            for chunk in self._chunks():
                await response.write(chunk)
                attempt.written += len(chunk)
                expanded += len(_ZEROS) if self.body == "gzip" else len(chunk)
                if expanded >= (BOMB_CAP if self.body == "gzip" else ENDLESS_CAP):
                    break
            writing = False
            await asyncio.Event().wait()  # never ends the body; cancelled when the sender closes
        except ConnectionError:
            pass
        finally:
            attempt.cut_off = writing
            attempt.closed.set()
        return response


class Listener:
    """A bare TCP listener on 127.0.0.1 that notes the connections it accepts (and closes them):
    where a refused address leads, to show that nothing connected."""

    def __init__(self) -> None:
        #: The client port of each connection accepted, in the order they were accepted.
        self.peers: list[int] = []
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Listener:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._changed:
            self.peers.append(writer.get_extra_info("peername")[1])
            self._changed.notify_all()
        writer.close()

    async def connections_before_now(self, timeout: float = 30.0) -> int:
        """How many connections arrived before this call. A barrier, not a wait: it connects once
        itself and waits until that connection was accepted; the listener accepts connections in
        the order they arrived, so every earlier one is counted by then."""
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        mine = writer.get_extra_info("sockname")[1]
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: mine in self.peers), timeout)
                return self.peers.index(mine)
        finally:
            writer.close()
