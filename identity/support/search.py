"""The console's search: one box that takes an email address (whole or its start), a name, a
phone number or a ``sub``, and returns at most ``limit`` people in a fixed order.

:func:`find` classifies the query, in this order:

- empty, or longer than :data:`MAX_QUERY` characters: kind ``empty``, no database access;
- UUID-shaped: ``sub``, exact;
- contains ``@``: ``email``, exact on the normalised address (``schemas.account.normalize_email``);
  when the query is not a complete address or nobody has it, ``email_prefix``: addresses
  starting with it;
- starts with ``+`` or is mostly digits: ``phone``, the stored number (E.164, ``+447700900123``)
  equal to the whole number given, never a prefix (the console masks numbers, so a prefix search
  would reveal them digit by digit); ``00`` stands for ``+``. A national number (``07700 …``)
  or part of a number finds nothing: stored numbers carry the country code;
- anything else: ``name``, case-insensitive prefixes of the family name, the given name,
  "given family" or "family, given".

Every kind is an index scan on Postgres (a phone number an equality on its index; the others
a range): each prefix match is a range in byte order
(``~>=~`` / ``~<~``, served by the ``text_pattern_ops`` indexes on ``accounts``), and results
come in that index's order, so a short prefix matching 100,000 people still reads only
``limit`` of them. A prefix is a range, not a ``LIKE`` pattern, so ``%`` and ``_`` in a query
are plain characters. Names are lowered by the database itself (``lower()``, on the stored
value and on the query alike), so both sides fold case the same way: fully on Postgres, ASCII
only on SQLite.

Order: ``sub`` and ``email`` give at most one person; ``email_prefix`` is by address;
``phone`` by account id. A name query runs its readings one after the other and
lists their matches in that order, without repeats: "given family" (a query of several words,
split at each space in turn) or "family, given" (a query with a comma), then family names
starting with the whole query (by family name, given name, account id), then given names
(by given name, family name, account id)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from identity.db import dialect
from identity.db.models import Account
from schemas.account import normalize_email

Kind = Literal["email", "email_prefix", "name", "phone", "sub", "empty"]

MAX_QUERY = 200
#: Readings of a many-word name tried as "given family" (split after word 1, 2, 3).
_MAX_SPLITS = 3
#: The last code point: ``p || _TOP`` bounds every string that starts with ``p``.
_TOP = "\U0010ffff"

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PHONE_SEPARATORS = re.compile(r"[\s().\-/]")


@dataclass(frozen=True)
class PersonRow:
    """One person in a result: enough to tell people apart and open the right profile."""

    sub: str
    email: str
    given_name: str | None
    family_name: str | None
    status: str
    created_at: dt.datetime


@dataclass(frozen=True)
class SearchResult:
    kind: Kind
    rows: list[PersonRow]


_COLUMNS = (Account.sub, Account.email, Account.given_name, Account.family_name, Account.status, Account.created_at)
_FAMILY = func.lower(Account.family_name)
_GIVEN = func.lower(Account.given_name)


async def find(db: AsyncSession, query: str, *, limit: int = 25) -> SearchResult:
    """Find at most ``limit`` people matching ``query``; see the module's docstring."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if len(query) > MAX_QUERY:
        return SearchResult("empty", [])
    text = " ".join(_CONTROL.sub(" ", query).split())
    if not text:
        return SearchResult("empty", [])
    postgres = dialect.is_postgres(db)
    if _UUID.match(text.lower()):
        return SearchResult("sub", await _rows(db, [Account.sub == text.lower()], [], 1))
    if "@" in text:
        return await _email(db, "".join(text.split()).lower(), limit, postgres)
    if _looks_like_phone(text):
        return await _phone(db, text, limit)
    return SearchResult("name", await _name(db, text, limit, postgres))


async def _email(db: AsyncSession, text: str, limit: int, postgres: bool) -> SearchResult:
    try:
        address = normalize_email(text)
    except ValueError:
        pass
    else:
        if rows := await _rows(db, [Account.email == address], [], 1):
            return SearchResult("email", rows)
    where = _starts_with(Account.email, literal(text), postgres)
    return SearchResult("email_prefix", await _rows(db, where, [_by(Account.email)], limit))


def _looks_like_phone(text: str) -> bool:
    if text.startswith("+"):
        return True
    compact = _PHONE_SEPARATORS.sub("", text)
    return sum(c.isdigit() for c in compact) * 2 > len(compact)


async def _phone(db: AsyncSession, text: str, limit: int) -> SearchResult:
    compact = _PHONE_SEPARATORS.sub("", text)
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    else:
        digits = compact
    if not digits.isascii() or not digits.isdigit() or digits.startswith("0") or len(digits) > 15:
        return SearchResult("phone", [])  # no stored number (``+``, a country code, 15 digits at most) can match
    # The whole number only: a prefix would read masked numbers out a digit at a time.
    where = [Account.phone_number == "+" + digits]
    return SearchResult("phone", await _rows(db, where, [Account.id], limit))


async def _name(db: AsyncSession, text: str, limit: int, postgres: bool) -> list[PersonRow]:
    by_family = [_by(_FAMILY), _by(_GIVEN), Account.id]
    by_given = [_by(_GIVEN), _by(_FAMILY), Account.id]
    readings: list[tuple[list[ColumnElement[bool]], list[Any]]] = []
    if "," in text:
        family, _, given = (part.strip() for part in text.partition(","))
        if family:
            where = _lower_starts_with(_FAMILY, family, postgres)
            if given:
                where += _lower_starts_with(_GIVEN, given, postgres)
            readings.append((where, by_family))
    else:
        words = text.split(" ")
        for split in range(1, min(len(words), _MAX_SPLITS + 1)):
            given, family = " ".join(words[:split]), " ".join(words[split:])
            where = _lower_starts_with(_FAMILY, family, postgres) + _lower_starts_with(_GIVEN, given, postgres)
            readings.append((where, by_family))
    readings.append((_lower_starts_with(_FAMILY, text, postgres), by_family))
    readings.append((_lower_starts_with(_GIVEN, text, postgres), by_given))
    found: dict[str, PersonRow] = {}
    for where, order in readings:
        # A reading's first ``limit`` matches hold every new person it can add: those it
        # shares with the readings before are among the fewer than ``limit`` found so far.
        for row in await _rows(db, where, order, limit):
            found.setdefault(row.sub, row)
            if len(found) == limit:
                return list(found.values())
    return list(found.values())


async def _rows(db: AsyncSession, where: Sequence[ColumnElement[bool]], order: Sequence[Any], limit: int) -> list[PersonRow]:
    statement = select(*_COLUMNS).where(*where).order_by(*order).limit(limit)
    return [PersonRow(*row) for row in await db.execute(statement)]


def _lower_starts_with(column: ColumnElement[Any], text: str, postgres: bool) -> list[ColumnElement[bool]]:
    """``column`` (already lowered) starts with ``text`` lowered by the database."""
    return _starts_with(column, func.lower(literal(text)), postgres)


def _starts_with(column: Any, prefix: ColumnElement[str], postgres: bool) -> list[ColumnElement[bool]]:
    """``prefix <= column < prefix || U+10FFFF`` in byte order: the rows whose value starts with
    ``prefix``, as a range an index can serve (``text_pattern_ops`` on Postgres, whose
    ``~>=~`` and ``~<~`` compare bytes whatever the collation; SQLite compares bytes anyway)."""
    upper = prefix.concat(_TOP).self_group()
    if postgres:
        return [and_(column.op("~>=~", is_comparison=True)(prefix), column.op("~<~", is_comparison=True)(upper))]
    return [and_(column >= prefix, column < upper)]


class _Bytewise(ColumnElement[Any]):
    """An ORDER BY term: ``column`` in byte order, nulls last. ``USING ~<~`` on Postgres, which
    walks a ``text_pattern_ops`` index in its own order (a plain ``ORDER BY`` follows the
    collation and could not); SQLite's binary collation already orders bytes."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]  # noqa: RUF012 (SQLAlchemy's protocol)

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column


@compiles(_Bytewise)
def _bytewise(element: _Bytewise, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} NULLS LAST"


@compiles(_Bytewise, "postgresql")
def _bytewise_postgres(element: _Bytewise, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} USING ~<~ NULLS LAST"


def _by(column: Any) -> _Bytewise:
    return _Bytewise(column.__clause_element__() if hasattr(column, "__clause_element__") else column)
