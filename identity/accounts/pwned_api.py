"""Have I Been Pwned's Pwned Passwords range API, asked about a new password when the operator
enables it (``ONESIGNIN_BREACHED_PASSWORD_API``).

The API never learns the password: k-anonymity sends only the first five hex digits of its
SHA-1 and gets back every known suffix with that prefix and how often it was seen. With
``Add-Padding: true`` the answer also carries decoy suffixes seen zero times, so its size does
not tell which prefix was asked.

It fails open. When the API cannot be reached within the timeout, answers with another status,
sends a body larger than ``MAX_BODY`` or compressed, or sends anything that is not a list of
``SUFFIX:COUNT`` lines, the answer is "not known" and the offline list
(:mod:`identity.accounts.breached`) is the only check. A failure is logged without the password
or its hash.

Call :meth:`RangeApi.seen` while no database connection is held: it waits on the network.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from identity.settings import Settings

__all__ = ["MAX_BODY", "RangeApi", "range_api"]

log = logging.getLogger(__name__)

#: The most of an answer read. A real one is 30 to 80 KiB (padded to 800 to 1,000 lines or more).
MAX_BODY = 512 * 1024
_LINE = re.compile(r"([0-9A-F]{35}):([0-9]{1,12})")


class _Unusable(Exception):
    """An answer the check cannot use (its public text is all that is logged)."""


@dataclass(frozen=True)
class RangeApi:
    """The range endpoint at ``base_url`` (``{base_url}{first five hex digits}``), called
    through ``http``, a session that does not decompress (see :func:`range_api`)."""

    http: aiohttp.ClientSession
    base_url: str
    timeout: float

    async def seen(self, password: str) -> bool:
        """Whether the API knows ``password`` from a breach; False when it cannot say."""
        digest = hashlib.sha1(password.encode("utf-8", "surrogatepass")).hexdigest().upper()
        prefix, suffix = digest[:5], digest[5:]
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._range(prefix)
            counts = _parse(body)
        except (aiohttp.ClientError, TimeoutError, _Unusable) as exc:
            log.warning("the breached-password API gave no usable answer, so only the offline list was checked: %s", _describe(exc))
            return False
        return counts.get(suffix, 0) > 0

    async def _range(self, prefix: str) -> bytes:
        async with self.http.get(self.base_url + prefix, allow_redirects=False) as response:
            if response.status != 200:
                raise _Unusable(f"status {response.status}")
            if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise _Unusable("a compressed answer")
            if (response.content_length or 0) > MAX_BODY:
                raise _Unusable("an answer over the size limit")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_BODY:
                    raise _Unusable("an answer over the size limit")
            return bytes(body)


def _parse(body: bytes) -> dict[str, int]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise _Unusable("an answer that is not ASCII text") from None
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line:
            continue
        match = _LINE.fullmatch(line.strip().upper())
        if match is None:
            raise _Unusable("an answer that is not a list of SUFFIX:COUNT lines")
        counts[match[1]] = int(match[2])
    return counts


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, _Unusable):
        return str(exc)
    return type(exc).__name__


@asynccontextmanager
async def range_api(settings: Settings) -> AsyncIterator[RangeApi | None]:
    """The API client for as long as the block runs, or None when the operator has not enabled it.

    Its own session: no automatic decompression (a small compressed answer cannot expand into a
    large one), ``Accept-Encoding: identity``, padding asked for, no cookies kept, a few connections
    at most.
    """
    if not settings.breached_password_api:
        yield None
        return
    headers = {"User-Agent": "OneSignIn", "Add-Padding": "true", "Accept-Encoding": "identity"}
    timeout = aiohttp.ClientTimeout(total=settings.breached_password_api_timeout)
    connector = aiohttp.TCPConnector(limit=8)
    # No cookies: a cookie sent back would tie one range query to the next.
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector, auto_decompress=False, cookie_jar=jar) as http:
        yield RangeApi(http, settings.breached_password_api_url, settings.breached_password_api_timeout)
