"""The console's search (identity.support.search.find) on SQLite and Postgres: each kind of query
finds what it should and nothing else, in a fixed order, through an index."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.schema import CreateIndex

from identity.accounts.store import create_account
from identity.db.models import Account, Base
from identity.support.search import MAX_QUERY, SearchResult, find
from schemas.account import BasicDetails

SEARCH_INDEXES = ("ix_accounts_email_prefix", "ix_accounts_phone_number", "ix_accounts_family_given", "ix_accounts_given_family")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(database_url)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


async def add(
    sessions: async_sessionmaker[AsyncSession],
    email: str,
    given_name: str | None = None,
    family_name: str | None = None,
    phone_number: str | None = None,
) -> str:
    """Store a person as registration would (details validated and normalised); return the sub."""
    body = {"email": email, "given_name": given_name, "family_name": family_name, "phone_number": phone_number}
    details = BasicDetails.model_validate({k: v for k, v in body.items() if v is not None})
    async with sessions.begin() as db:
        account = await create_account(db, email=details.email, password_hash="-", details=details.changes(), channel="cli")
    return account.sub


async def search(sessions: async_sessionmaker[AsyncSession], query: str, limit: int = 25) -> SearchResult:
    async with sessions() as db:
        return await find(db, query, limit=limit)


def names(result: SearchResult) -> list[str]:
    return [f"{row.given_name} {row.family_name}" for row in result.rows]


def emails(result: SearchResult) -> list[str]:
    return [row.email for row in result.rows]


async def test_sub_is_exact(sessions: async_sessionmaker[AsyncSession]) -> None:
    ann = await add(sessions, "ann@example.com", "Ann", "Smith")
    await add(sessions, "bob@example.com", "Bob", "Smith")

    result = await search(sessions, f"  {ann.upper()} ")
    assert result.kind == "sub"
    assert [row.sub for row in result.rows] == [ann]
    row = result.rows[0]
    assert (row.email, row.given_name, row.family_name, row.status) == ("ann@example.com", "Ann", "Smith", "active")
    assert row.created_at.tzinfo is not None

    assert await search(sessions, str(uuid.uuid4())) == SearchResult("sub", [])
    assert (await search(sessions, ann[:-1])).rows == []  # the start of a sub finds nobody


async def test_email_exact_then_prefix(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(sessions, "ann@example.com", "Ann", "Smith")
    await add(sessions, "ann@example.com.au", "Ann", "Jones")
    await add(sessions, "anna@example.com", "Anna", "Brown")
    await add(sessions, "bob@example.com", "Bob", "Ann")

    exact = await search(sessions, " Ann@EXAMPLE.com ")
    assert exact.kind == "email"
    assert emails(exact) == ["ann@example.com"]

    prefix = await search(sessions, "ANN@exa")
    assert prefix.kind == "email_prefix"
    assert emails(prefix) == ["ann@example.com", "ann@example.com.au"]

    # Complete, but nobody has it: the addresses that start with it.
    missing = await search(sessions, "ann@example.co")
    assert missing.kind == "email_prefix"
    assert emails(missing) == ["ann@example.com", "ann@example.com.au"]

    assert await search(sessions, "carol@example.com") == SearchResult("email_prefix", [])
    assert emails(await search(sessions, "an@")) == []  # a prefix of the whole address, not of its parts


async def test_phone_in_any_common_format(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(sessions, "ann@example.com", "Ann", "Smith", phone_number="+44 7700 900123")
    await add(sessions, "bob@example.com", "Bob", "Smith", phone_number="+447700900124")
    await add(sessions, "cy@example.com", "Cy", "Lee", phone_number="+1 (415) 555-0100")
    await add(sessions, "dee@example.com", "Dee", "Lee")

    for query in ("+447700900123", "+44 7700 900123", "+44 (7700) 900-123", "447700900123", "0044 7700 900 123"):
        result = await search(sessions, query)
        assert (result.kind, emails(result)) == ("phone", ["ann@example.com"]), query

    assert emails(await search(sessions, "+1 415-555-0100")) == ["cy@example.com"]
    # Only a whole number matches: a prefix would read masked numbers out digit by digit.
    for partial in ("+44 7700 9001", "+44 7700 90012", "+4477009001", "+1 415", "+44"):
        assert await search(sessions, partial) == SearchResult("phone", []), partial
    assert await search(sessions, "+447700900123 4") == SearchResult("phone", [])
    # A national number has no country code: stored numbers cannot match it.
    assert await search(sessions, "07700 900123") == SearchResult("phone", [])
    assert await search(sessions, "+44 77x") == SearchResult("phone", [])


async def test_name_prefixes_case_insensitive(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(sessions, "p1@example.com", "Zoe", "Smith")
    await add(sessions, "p2@example.com", "Ann", "Smithson")
    await add(sessions, "p3@example.com", "Ann", "Smith")
    await add(sessions, "p4@example.com", "Smithy", "Jones")
    await add(sessions, "p5@example.com", "Anna", "Jones")
    await add(sessions, "p6@example.com", "Bob", "Brown")

    result = await search(sessions, "SMIth")
    assert result.kind == "name"
    # Family names first (by family name, given name), then given names.
    assert names(result) == ["Ann Smith", "Zoe Smith", "Ann Smithson", "Smithy Jones"]
    assert names(await search(sessions, "ann")) == ["Ann Smith", "Ann Smithson", "Anna Jones"]
    assert names(await search(sessions, "smithso")) == ["Ann Smithson"]
    assert names(await search(sessions, "brow")) == ["Bob Brown"]
    assert names(await search(sessions, "mith")) == []  # a prefix, not a substring


async def test_given_family_and_family_given(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(sessions, "p1@example.com", "Ann", "Smith")
    await add(sessions, "p2@example.com", "Anna", "Smithson")
    await add(sessions, "p3@example.com", "Ann", "Jones")
    await add(sessions, "p4@example.com", "Bob", "Smith")
    await add(sessions, "p5@example.com", "Mary Ann", "van der Berg")
    await add(sessions, "p6@example.com", "Jan", "van Dijk")

    assert names(await search(sessions, "ann smith")) == ["Ann Smith", "Anna Smithson"]
    assert names(await search(sessions, "Ann  Smith  ")) == ["Ann Smith", "Anna Smithson"]
    assert names(await search(sessions, "smith, ann")) == ["Ann Smith", "Anna Smithson"]
    assert names(await search(sessions, "Smith,  Ann")) == ["Ann Smith", "Anna Smithson"]
    assert names(await search(sessions, "smith,")) == ["Ann Smith", "Bob Smith", "Anna Smithson"]
    assert names(await search(sessions, "ann jo")) == ["Ann Jones"]
    assert names(await search(sessions, "mary ann van der")) == ["Mary Ann van der Berg"]
    # No given name "van…" with a family name "d…": the whole query as a family name.
    assert names(await search(sessions, "van d")) == ["Mary Ann van der Berg", "Jan van Dijk"]
    assert names(await search(sessions, "ann brown")) == []


async def test_limit_and_order_are_fixed(sessions: async_sessionmaker[AsyncSession]) -> None:
    for i, given in enumerate(["Eve", "Ann", "Dan", "Bea", "Cal", "Ann"]):
        await add(sessions, f"t{i}@example.com", given, "Taylor")
    await add(sessions, "t9@example.com", "Taylor", "Adams")

    first = await search(sessions, "taylor", limit=3)
    assert names(first) == ["Ann Taylor", "Ann Taylor", "Bea Taylor"]
    # Equal names are ordered by account (creation): the same two people, in the same order.
    assert emails(first)[:2] == ["t1@example.com", "t5@example.com"]
    assert first == await search(sessions, "taylor", limit=3)
    everyone = await search(sessions, "taylor")
    assert names(everyone) == [*(f"{g} Taylor" for g in ("Ann", "Ann", "Bea", "Cal", "Dan", "Eve")), "Taylor Adams"]
    assert everyone.rows[:3] == first.rows
    assert len((await search(sessions, "taylor", limit=7)).rows) == 7
    assert emails(await search(sessions, "t@", limit=1)) == []
    assert emails(await search(sessions, "t1@", limit=1)) == ["t1@example.com"]
    with pytest.raises(ValueError):
        await search(sessions, "taylor", limit=0)


async def test_wildcards_are_plain_characters(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(sessions, "a_b@example.com", "Ann", "O_Brien")
    await add(sessions, "axb@example.com", "Ann", "OxBrien")
    await add(sessions, "a%b@example.com", "Ann", "Ab%cd")
    await add(sessions, "axxb@example.com", "Ann", "Abxcd")
    await add(sessions, "a\\b@example.com", "Ann", "Back\\slash")

    assert emails(await search(sessions, "a_b@")) == ["a_b@example.com"]
    assert emails(await search(sessions, "a%")) == []  # no "@": a name, and nobody's starts with "a%"
    assert emails(await search(sessions, "a%b@")) == ["a%b@example.com"]
    assert emails(await search(sessions, "a\\b@")) == ["a\\b@example.com"]
    assert names(await search(sessions, "o_b")) == ["Ann O_Brien"]
    assert names(await search(sessions, "ab%")) == ["Ann Ab%cd"]
    assert names(await search(sessions, "%")) == []
    assert names(await search(sessions, "_")) == []
    assert names(await search(sessions, "back\\")) == ["Ann Back\\slash"]


async def test_non_ascii_names(sessions: async_sessionmaker[AsyncSession], database_url: str) -> None:
    await add(sessions, "o@example.com", "Øyvind", "Ørsted")
    await add(sessions, "e@example.com", "Élodie", "Müller")

    assert names(await search(sessions, "Ørs")) == ["Øyvind Ørsted"]
    assert names(await search(sessions, "Élo")) == ["Élodie Müller"]
    assert names(await search(sessions, "mü")) == ["Élodie Müller"]
    # Postgres folds every letter's case; SQLite's lower() only ASCII letters.
    folded = names(await search(sessions, "ørs"))
    assert folded == ([] if database_url.startswith("sqlite") else ["Øyvind Ørsted"])


class NoDatabase:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the database was used ({name})")


@pytest.mark.parametrize("query", ["", "   ", "\t\n", "\x00", "a" * (MAX_QUERY + 1), "ann@example.com" + " " * MAX_QUERY])
async def test_empty_or_too_long_does_not_search(query: str) -> None:
    assert await find(NoDatabase(), query) == SearchResult("empty", [])  # type: ignore[arg-type]


async def test_control_characters_are_spaces(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(sessions, "ann@example.com", "Ann", "Smith")
    assert names(await search(sessions, "ann\x00smith")) == ["Ann Smith"]
    assert emails(await search(sessions, "ann@exam\x00ple.com")) == ["ann@example.com"]


async def test_indexes_match_the_migration(database_url: str) -> None:
    """The migrated schema holds exactly the search indexes the models declare (operator
    classes included, which Alembic's comparison does not look at)."""
    engine = create_async_engine(database_url)
    dialect = postgresql.dialect() if database_url.startswith("postgresql") else sqlite.dialect()
    declared = {ix.name: str(CreateIndex(ix).compile(dialect=dialect)) for ix in Account.__table__.indexes if ix.name in SEARCH_INDEXES}

    def differences(connection: Any) -> list[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLite cannot reflect expression indexes
            diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        return [d for d in diffs if "accounts" in repr(d)]

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []
        if dialect.name == "postgresql":
            rows = await connection.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'accounts'"))
            migrated = {name: sql.replace("public.", "").replace("USING btree ", "") for name, sql in rows}
            migrated = {n: s.replace("(family_name)::text", "family_name").replace("(given_name)::text", "given_name") for n, s in migrated.items()}
        else:
            rows = await connection.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'accounts'"))
            migrated = dict(rows.all())
    await engine.dispose()
    assert {name: migrated.get(name) for name in SEARCH_INDEXES} == declared


async def test_every_kind_can_use_an_index_on_postgres(sessions: async_sessionmaker[AsyncSession], database_url: str) -> None:
    """With sequential scans priced out, every statement a search sends is a range of an index
    (a missing index or a wrong operator class would leave a Seq Scan or a full index walk)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("query plans are checked on Postgres")
    ann = await add(sessions, "ann@example.com", "Ann", "Smith", phone_number="+447700900123")
    statements: list[tuple[str, Any]] = []
    engine = sessions.kw["bind"]

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    for query in (ann, "ann@example.com", "ann@exa", "+44 7700", "smi", "ann smi", "smith, an", "zzz"):
        await search(sessions, query)
    event.remove(engine.sync_engine, "before_cursor_execute", capture)
    assert len(statements) >= 9

    async with engine.connect() as connection:
        await connection.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            plan = "\n".join(row[0] for row in await connection.exec_driver_sql("EXPLAIN " + statement, parameters))
            assert "Seq Scan" not in plan, plan
            assert "Index Cond" in plan, plan  # a range of the index, not a walk through all of it
