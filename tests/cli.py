"""``onesignin`` commands run as child processes that start with the CLI already imported.

``python -m identity.cli`` spends about a second of CPU importing before it does anything; a
test that runs a dozen short commands would mostly wait for imports. ``onesignin(env, *args)``
answers like ``subprocess.run([sys.executable, "-m", "identity.cli", *args], env=env, ...)``:
each command is its own process (forked from a server that imported ``identity.cli`` once), with
exactly ``env`` as its environment, ``stdin`` as its standard input, its own standard output and
error, and its exit status. Commands that must be seen as a program in the process list, or that
run a server (``serve``, ``relay``, ``worker``), are started with ``subprocess`` as before.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["identity.cli"])


def _command(args: list[str], env: dict[str, str], cwd: str, files: tuple[str, str, str]) -> None:
    """In the child: become ``onesignin ARGS`` with ``env``, then run the command."""
    stdin, stdout, stderr = files
    for fd, path, mode in ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY), (2, stderr, os.O_WRONLY)):
        opened = os.open(path, mode)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["onesignin", *args]
    from identity.cli import main

    sys.exit(main(args))


def onesignin(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``onesignin ARGS`` as a process of its own; blocking, like ``subprocess.run``."""
    with tempfile.TemporaryDirectory(prefix="onesignin-cli-") as tmp:
        files = tuple(str(Path(tmp) / name) for name in ("stdin", "stdout", "stderr"))
        Path(files[0]).write_text(stdin or "", encoding="utf-8")
        Path(files[1]).touch()
        Path(files[2]).touch()
        process = _context.Process(target=_command, args=(list(args), dict(env), os.getcwd(), files))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["onesignin", *args], timeout)
        return subprocess.CompletedProcess(
            ["onesignin", *args],
            process.exitcode,
            Path(files[1]).read_text(encoding="utf-8"),
            Path(files[2]).read_text(encoding="utf-8"),
        )
