"""What the hub keeps on disk is its owner's alone: after a real ``onesignin serve`` on the
embedded defaults, the data dir is 0700 and the database, its WAL and shared-memory files, the
generated secret key and every ``.eml`` mail are 0600 — created that way even under a umask that
would leave them open to everyone — and a data dir an older version left readable is tightened."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from identity.private_files import create_once
from tests.conftest import free_port
from tests.support import PASSWORD, form

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def serving(data_dir: Path, *, umask: int) -> Iterator[str]:
    """``onesignin serve`` on the embedded defaults (SQLite, generated key, mail as files),
    started under ``umask``; yields its URL once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESIGNIN_")} | {
        "ONESIGNIN_DATA_DIR": str(data_dir),
        "ONESIGNIN_ISSUER": url,
        "ONESIGNIN_ARGON2_MEMORY_COST": "8192",
        "ONESIGNIN_ARGON2_TIME_COST": "1",
    }
    hub = subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "serve", "--port", str(port), "--metrics-port", "0", "--no-sync"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.umask(umask),  # noqa: PLW1509 - the child's umask only
    )
    try:
        for _ in range(600):  # bounded wait until it listens, not a timing assertion
            if hub.poll() is not None:
                raise AssertionError(f"serve exited: {hub.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx2.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        hub.terminate()
        hub.wait(timeout=60)
        hub.stderr.close()  # type: ignore[union-attr]


def register(url: str) -> None:
    """A registration: an account row written (so the WAL has content) and a confirmation mailed."""
    with httpx2.Client(base_url=url, timeout=30) as http:
        page = http.get("/register")
        f = form(page.text, "/register")
        values = {"email": "new@example.com", "password": PASSWORD, "given_name": "Nia", "family_name": "Newcomer", "birthdate": "1990-05-17"}
        answer = http.post(f.action, data=f.fields | values)
        assert answer.status_code in (200, 303), answer.text[:2000]


def mailed(data_dir: Path) -> list[Path]:
    for _ in range(600):  # the mail goes out in the background, after the answer
        found = sorted((data_dir / "mail").glob("*.eml")) if (data_dir / "mail").is_dir() else []
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("no mail was written")


def test_a_fresh_data_dir_and_everything_in_it_are_private_even_under_umask_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    with serving(data_dir, umask=0) as url:
        register(url)
        (eml,) = mailed(data_dir)
        # While the hub runs, SQLite keeps its write-ahead log and shared memory beside the database.
        database = data_dir / "onesignin.db"
        wal, shm = database.with_name("onesignin.db-wal"), database.with_name("onesignin.db-shm")
        assert wal.exists() and wal.stat().st_size > 0 and shm.exists()
        assert {p.name: oct(mode(p)) for p in (database, wal, shm, data_dir / "secret.key", eml)} == {
            "onesignin.db": "0o600",
            "onesignin.db-wal": "0o600",
            "onesignin.db-shm": "0o600",
            "secret.key": "0o600",
            eml.name: "0o600",
        }
        assert (oct(mode(data_dir)), oct(mode(data_dir / "mail"))) == ("0o700", "0o700")
        # Nothing else in it is open to others.
        assert [p for p in data_dir.rglob("*") if mode(p) & 0o077] == []


def test_a_data_dir_an_older_version_left_readable_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    with serving(data_dir, umask=0o022):
        pass
    for path in [data_dir, data_dir / "onesignin.db", data_dir / "secret.key"]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    key = (data_dir / "secret.key").read_text()
    with serving(data_dir, umask=0o022) as url:
        register(url)
        mailed(data_dir)
        assert [p for p in [data_dir, *data_dir.rglob("*")] if mode(p) & 0o077] == []
    assert (data_dir / "secret.key").read_text() == key  # the same key, kept


def test_a_secret_key_is_created_once_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    assert create_once(path, b"first") is True
    assert create_once(path, b"second") is False  # another process got there first: its key stays
    assert path.read_bytes() == b"first" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary file left behind
