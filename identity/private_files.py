"""The data dir and what the hub keeps in it (the embedded database and its WAL, the generated
secret key, mail written as ``.eml`` files) are its owner's alone: directories 0700, files
0600, created with those modes (``mkdir``/``open`` with the mode, never a ``chmod`` once
another user could have opened them). A data dir or file left readable by an older version is
tightened when the hub next opens it."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "create_once", "private_dir", "private_file"]

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (parents are made as the umask says)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner can read, created empty if missing (its directory is
    left as it is: make it with :func:`private_dir` where it is the hub's own). SQLite gives a
    database's ``-wal`` and ``-shm`` files the database file's mode, so a database file made
    here keeps its WAL private too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        _tighten(path, FILE_MODE)
        for companion in ("-wal", "-shm", "-journal"):
            sibling = path.with_name(path.name + companion)
            if sibling.exists():
                _tighten(sibling, FILE_MODE)
    return path


def create_once(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (mode 0600) unless it exists, atomically: readers never see a
    partial file, and of processes racing to create it one wins (True) and the others leave it
    as it is (False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")  # 0600
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)


def _tighten(path: Path, mode: int) -> None:
    """Take away group and other access from ``path`` when this process owns it."""
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & ~mode == 0:
        return
    if info.st_uid != os.getuid():
        log.warning("%s is readable by other users and owned by another user: make it %o", path, mode)
        return
    os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
    log.warning("%s was readable by other users: it is now %o", path, stat.S_IMODE(info.st_mode) & mode)
