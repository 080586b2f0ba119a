"""``onesignin serve --workers N``: N hub processes sharing one listening socket.

The parent binds the public port, one ``SO_REUSEPORT`` listening socket per child, and hands
socket ``i`` to child ``i`` (``pass_fds`` to a fresh ``python -m identity.cli serve``). The kernel
spreads new connections evenly over the sockets. One socket shared by every child would leave the
spreading to whichever process wakes first: an event loop accepts every connection waiting when it
wakes, so a burst of connections (a proxy opening its keep-alive pool, a load test) lands on one
process and stays there. The parent keeps every socket open for the life of the hub: a child that
stops or is replaced never closes its socket, so nothing queued on it is reset; connections wait
in its queue until its successor (or, during a SIGHUP, the old and new child both) accepts them.
A child that exits on its own is started again at once (then with backoff if it keeps failing):
meanwhile its share of new connections waits, it is not refused.

Child 0 is the whole hub as a single ``serve`` would be: with the outbox relay and the sync
worker (and, when ``ONESIGNIN_KAFKA_BOOTSTRAP_SERVERS`` is unset, the embedded broker, which it
starts and takes along when it stops) and ``/metrics``. The others serve HTTP only. The parent
runs no event loop and opens no database: it starts, watches, restarts and stops children.

- SIGTERM or SIGINT: every child stops accepting, finishes its requests in flight (bounded by
  aiohttp's shutdown timeout), runs its cleanup; the parent waits for them and exits 0.
- A child that exits on its own is started again after a backoff (logged), which starts afresh
  once a child has stayed up a while.
- SIGHUP: the children are replaced one by one (each new process loads the code afresh; its
  environment, and so its settings, is the parent's): an HTTP child is stopped only once its successor is ready; child 0, which must not
  run twice, is stopped first and then started again.
- Each child gets SIGTERM if the parent dies, even by SIGKILL.
- The children share one ``PROMETHEUS_MULTIPROC_DIR`` (made by the parent, removed when it stops):
  each writes its HTTP, sign-in, token and pool figures there and child 0's ``/metrics`` reports
  their sum (``identity.metrics``); a child that exits is marked dead, so its pool gauges go."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from identity.metrics import MULTIPROC_DIR

log = logging.getLogger("onesignin.workers")

RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)  # seconds before each restart in a row, the last repeats
STABLE_SECONDS = 30.0  # a child up this long starts the backoff afresh when it next dies
READY_TIMEOUT = 120.0  # a new child must be serving within this
#: A child stopping gets this long (aiohttp's shutdown timeout for requests in flight, its cleanup,
#: and a margin) before it is killed.
STOP_TIMEOUT = 75.0
POLL_SECONDS = 0.1

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def listening_sockets(host: str, port: int, count: int, backlog: int = 1024) -> list[socket.socket]:
    """``count`` sockets listening on ``host:port`` together (SO_REUSEPORT). Raises OSError when
    the port is taken, even by a process that would share it (another hub of the same user):
    a plain bind is tried first."""
    _bound(host, port, reuse_port=False).close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _bound(host, port, reuse_port=True)
            sockets.append(sock)
            port = sock.getsockname()[1]  # port 0: the others join the port the first one got
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _in_child() -> None:
    """Before exec, in the child (the parent runs no threads): SIGTERM when the parent dies; a
    hangup is the parent's to handle."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


@dataclass
class Child:
    index: int
    process: subprocess.Popen[bytes]
    ready_pipe: int  # the read end: one byte arrives once the child serves
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    def check_ready(self) -> bool:
        if not self.ready:
            try:
                self.ready = bool(os.read(self.ready_pipe, 1))
            except BlockingIOError:
                pass
        return self.ready

    def close(self) -> None:
        os.close(self.ready_pipe)


class StartupFailed(Exception):
    """A child exited before it served, as the hub was starting."""


class Supervisor:
    """Runs ``command(index, listen_fd, ready_fd)`` as child ``index`` on ``sockets[index]``."""

    def __init__(self, sockets: list[socket.socket], command: Callable[[int, int, int], Sequence[str]]) -> None:
        self.sockets = sockets
        self.count = len(sockets)
        self.command = command
        self.children: dict[int, Child] = {}
        self.failures: dict[int, int] = {}
        self.restart_at: dict[int, float] = {}
        self.stopping = False
        self.reload = False
        self.metrics_dir = ""

    # -- signals ---------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stopping = True

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        log.info("SIGHUP: replacing the workers one by one")
        self.reload = True

    # -- children --------------------------------------------------------------------------

    def _spawn(self, index: int) -> Child:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        fd = self.sockets[index].fileno()
        try:
            process = subprocess.Popen(
                list(self.command(index, fd, write_end)),
                env=os.environ | {MULTIPROC_DIR: self.metrics_dir} if self.metrics_dir else None,
                pass_fds=(fd, write_end),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                preexec_fn=_in_child,  # noqa: PLW1509 (the parent runs no threads)
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        log.info("worker %s started (pid %s)%s", index, process.pid, ": with the sync pipeline and /metrics" if index == 0 else "")
        return Child(index, process, read_end)

    def _stop(self, child: Child) -> int:
        """Stop ``child`` gracefully (killed after STOP_TIMEOUT); its exit status."""
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
        try:
            status = child.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("worker %s (pid %s) did not stop within %s s: killed", child.index, child.process.pid, STOP_TIMEOUT)
            child.process.kill()
            status = child.process.wait()
        child.close()
        self._dead(child)
        return status

    def _dead(self, child: Child) -> None:
        """Its live gauges (the pool) leave the sum; its counters stay in it."""
        if self.metrics_dir:
            multiprocess.mark_process_dead(child.process.pid, self.metrics_dir)

    def _wait_ready(self, child: Child) -> bool:
        """Until ``child`` serves (True), or exits, times out, or the hub is told to stop (False)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not child.check_ready():
            if child.process.poll() is not None or self.stopping or time.monotonic() > deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def _start_all(self) -> None:
        for index in range(self.count):
            self.children[index] = self._spawn(index)
        for child in self.children.values():
            if not self._wait_ready(child):
                if self.stopping:
                    return
                status = child.process.poll()
                raise StartupFailed(
                    f"worker {child.index} " + (f"exited with status {status}" if status is not None else "did not start serving") +
                    " before it served (see its errors above)"
                )
        log.info("%s workers serving", self.count)

    def _watch(self) -> None:
        """Restart, with backoff, children that exited on their own."""
        now = time.monotonic()
        for index, child in list(self.children.items()):
            status = child.process.poll()
            if status is None:
                child.check_ready()
                if child.ready and now - child.started > STABLE_SECONDS:
                    self.failures.pop(index, None)
                continue
            child.close()
            self._dead(child)
            del self.children[index]
            failures = self.failures.get(index, 0)
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            self.failures[index] = failures + 1
            self.restart_at[index] = now + delay
            how = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
            log.error("worker %s (pid %s) exited with %s: starting it again in %s s", index, child.process.pid, how, delay)
        for index, when in list(self.restart_at.items()):
            if now >= when:
                del self.restart_at[index]
                self.children[index] = self._spawn(index)

    def _replace_all(self) -> None:
        """SIGHUP: the HTTP children one by one (the new one serving before the old one stops),
        then child 0 (stopped, then started: the sync pipeline never runs twice)."""
        for index in [*range(1, self.count), 0]:
            if self.stopping:
                return
            old = self.children.pop(index, None)
            self.restart_at.pop(index, None)
            if index == 0 and old is not None:
                self._stop(old)
                old = None
            new = self._spawn(index)
            self.children[index] = new
            if not self._wait_ready(new):
                if self.stopping:
                    if old is not None:
                        self._stop(old)
                    return
                log.error("the new worker %s did not start serving: %s", index, "keeping the old one" if old else "it is restarted with backoff")
                if old is not None:
                    self._stop(new)
                    self.children[index] = old
                continue
            if old is not None:
                self._stop(old)
            log.info("worker %s replaced (pid %s)", index, new.process.pid)
        self.failures.clear()

    def run(self) -> None:
        """Until SIGTERM or SIGINT; then stop every child. Raises StartupFailed."""
        previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop), (signal.SIGHUP, self._on_hangup))}
        self.metrics_dir = tempfile.mkdtemp(prefix="onesignin-metrics-")
        try:
            self._start_all()
            while not self.stopping:
                if self.reload:
                    self.reload = False
                    self._replace_all()
                self._watch()
                time.sleep(POLL_SECONDS)
        finally:
            self.stopping = True
            for child in self.children.values():
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            for child in self.children.values():
                self._stop(child)
            self.children.clear()
            for sock in self.sockets:
                sock.close()
            for s, h in previous.items():
                signal.signal(s, h)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("all workers stopped")
