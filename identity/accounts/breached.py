"""The offline list of passwords known from data breaches.

``data/breached-passwords.sha1`` holds a 40-bit prefix of the SHA-1 of each of about 4.2 million
breached passwords of at least 10 characters (their source and licence are in
``data/README.md``; ``tools/build_breached_passwords.py`` rebuilds it). The layout, all integers
big-endian:

* ``MAGIC`` (8 bytes);
* an index of ``BUCKETS + 1`` unsigned 32-bit entry numbers: the entries whose prefix starts
  with the two bytes ``b`` are numbers ``index[b]`` to ``index[b + 1] - 1``;
* the entries, sorted, each the three bytes of the prefix after those two.

A lookup hashes the password, reads its bucket's bounds from the index and bisects about 64
three-byte entries: a few microseconds each, and no load step. The file is memory-mapped, so
every process on the machine shares one copy and reads only the pages it touches.

Keeping prefixes rather than passwords makes the file four times smaller than the plain list and
leaves no password in it, at the cost of false positives: a password that is in no breach is
refused when its 40-bit prefix happens to match one of the entries, with probability
entries / 2**40, about 1 in 260,000 (``FALSE_POSITIVE_RATE``) for each form looked up.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import struct
from importlib import resources

__all__ = ["BreachedList", "FALSE_POSITIVE_RATE", "breached_list"]

MAGIC = b"OSIBRP01"
PREFIX_BYTES = 2
KEY_BYTES = 5
BUCKETS = 1 << (8 * PREFIX_BYTES)
_ENTRY = KEY_BYTES - PREFIX_BYTES
_BOUND = struct.Struct(">I")
_BOUNDS = struct.Struct(">II")
_INDEX_BYTES = _BOUND.size * (BUCKETS + 1)
_FILE = "data/breached-passwords.sha1"

#: The chance that one password in no breach matches an entry: entries / 2**40 for the shipped list.
FALSE_POSITIVE_RATE = 4.2e6 / 2 ** (8 * KEY_BYTES)


class BreachedList:
    """A sorted set of truncated SHA-1 digests, searched in place."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        if data[: len(MAGIC)] != MAGIC:
            raise ValueError("not a breached-password list")
        body = len(MAGIC) + _INDEX_BYTES
        if len(data) < body:
            raise ValueError("the breached-password list is truncated")
        (first,) = _BOUND.unpack_from(data, len(MAGIC))
        (self._count,) = _BOUND.unpack_from(data, body - _BOUND.size)
        if first != 0 or len(data) != body + _ENTRY * self._count:
            raise ValueError("the breached-password list is truncated or corrupt")
        self._data = data
        self._body = body

    def __len__(self) -> int:
        return self._count

    def __contains__(self, password: object) -> bool:
        return isinstance(password, str) and self.has_digest(hashlib.sha1(password.encode("utf-8", "surrogatepass")).digest())

    def has_digest(self, digest: bytes) -> bool:
        """Whether the list holds a password whose SHA-1 starts like ``digest``."""
        bucket = int.from_bytes(digest[:PREFIX_BYTES], "big")
        lo, hi = _BOUNDS.unpack_from(self._data, len(MAGIC) + _BOUND.size * bucket)
        key = digest[PREFIX_BYTES:KEY_BYTES]
        data, body = self._data, self._body
        while lo < hi:
            mid = (lo + hi) // 2
            start = body + mid * _ENTRY
            probe = data[start : start + _ENTRY]
            if probe < key:
                lo = mid + 1
            elif probe > key:
                hi = mid
            else:
                return True
        return False


@functools.cache
def breached_list() -> BreachedList:
    """The shipped list, mapped into memory once per process."""
    with resources.as_file(resources.files("identity.accounts").joinpath(_FILE)) as path, path.open("rb") as file:
        return BreachedList(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
