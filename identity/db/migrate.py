"""Apply the Alembic migrations that ship with the package."""

from __future__ import annotations

import functools
from collections import Counter
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from identity.db.locks import AdvisoryLock, take


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("identity.db") / "migrations"))
    config.attributes["connection"] = connection
    return config


class BrokenReferences(RuntimeError):
    """A migration left rows referring to rows that do not exist (a defect of the migration)."""


def _broken_references(connection: Connection) -> Counter[tuple[str, str]]:
    """SQLite's rows that refer to missing rows, counted by (table, referred table)."""
    return Counter((row[0], row[2]) for row in connection.exec_driver_sql("PRAGMA foreign_key_check"))


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(take(AdvisoryLock.MIGRATIONS))  # one migrator at a time
        command.upgrade(alembic_config(connection), "head")
        return
    # SQLite: Python's driver opens a transaction only before a row is written, so a table
    # rebuilt by a migration would be committed at once, and a failure would leave it half
    # done (and the next try stopped by its leftovers): all of it in one transaction instead.
    connection.exec_driver_sql("BEGIN")
    before = _broken_references(connection)
    command.upgrade(alembic_config(connection), "head")
    made = _broken_references(connection) - before
    if made:
        raise BrokenReferences(f"migrating would leave rows referring to missing rows: {sorted(made)}")


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine) -> str | None:
    """Bring the schema to the newest revision; return that revision.

    On SQLite, foreign keys are off while the migrations run, as Alembic's batch mode needs:
    SQLite changes a column by building the table anew and dropping the old one, and with
    foreign keys on, that ``DROP TABLE`` deletes its rows first, cascading to every row that
    refers to them (altering ``services`` once deleted every link, token and delivery). The
    references are checked before the migrations commit, in one transaction with them
    (:class:`BrokenReferences`: nothing is changed)."""
    async with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Only outside a transaction does SQLite take this pragma (the driver opens none for it).
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.commit()
        try:
            async with connection.begin():
                await connection.run_sync(_upgrade)
        finally:
            if sqlite:
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()
        return await connection.run_sync(_current)


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(files("identity.db") / "migrations"))
    return ScriptDirectory.from_config(config)


@functools.cache
def head_revision() -> str:
    """The newest revision this version of the hub ships."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this version ships (a database at another one was migrated by a newer version)."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


def migration_state(revision: str | None) -> str:
    """What a database at ``revision`` is to this version: ``ok`` (at its head), ``newer`` (a
    revision it does not know: a newer version migrated it, which keeps the earlier one working
    during a rolling upgrade), ``behind`` (run ``onesignin migrate``) or ``never`` (migrated)."""
    if revision is None:
        return "never"
    if revision == head_revision():
        return "ok"
    return "behind" if revision in known_revisions() else "newer"


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
