"""Password hashing off the event loop, with a bound on what may wait for it.

argon2id is CPU-bound and releases the GIL: it runs on a pool of threads, one per core. What
waits for those threads is bounded (``ONESIGNIN_HASH_QUEUE``): beyond the bound the hub answers
503 with ``Retry-After`` at once instead of letting everyone's sign-in wait behind a flood.
Requests that make a new hash (registration, resets, password changes) may fill only part of the
queue, so signing in keeps room."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from identity.accounts.passwords import PasswordHasher
from identity.i18n import lazy_gettext

T = TypeVar("T")

#: The part of the queue new hashes may fill.
NEW_HASH_SHARE = 0.5


class HashQueueFull(Exception):
    """Too many password hashes are waiting; the client should try again shortly."""

    public = lazy_gettext("Too many people are signing in or registering right now. Please try again in a moment.")
    retry_after = 2


class HashQueue:
    def __init__(self, hasher: PasswordHasher, pool: ThreadPoolExecutor, limit: int) -> None:
        self.hasher = hasher
        self.pool = pool
        self.limit = limit
        #: Hashes running or waiting for a thread.
        self.waiting = 0

    async def _run(self, share: float, work: Callable[..., T], *args: str) -> T:
        if self.waiting >= max(1, int(self.limit * share)):
            raise HashQueueFull()
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)
        finally:
            self.waiting -= 1

    async def hash(self, password: str) -> str:
        return await self._run(NEW_HASH_SHARE, self.hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check a password; with no stored hash, spend the same time and answer False."""
        if stored_hash is None:
            await self._run(1.0, self.hasher.dummy_verify, password)
            return False
        return await self._run(1.0, self.hasher.verify, stored_hash, password)
