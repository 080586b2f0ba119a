"""audit_records is append-only in the database itself

Revision ID: 0006
Revises: 0005

Rows of ``audit_records`` are never updated, and deleted only by the retention purge
(``identity.purge.audit_records``), which opens the way inside its own transaction:

- Postgres: a row trigger refuses UPDATE, and DELETE unless the transaction set
  ``onesignin.audit_purge`` to ``on`` (``SET LOCAL``: it ends with the transaction); a
  statement trigger refuses TRUNCATE.
- SQLite (no session variables): the one row of ``audit_purge_gate`` says whether a purge is
  under way; the purge sets it to 1 and back to 0 inside its transaction, so no other
  connection ever sees it open (SQLite has one writer, and readers see committed rows only).

This guards against ordinary code and statements going astray, not against the database's
owner, who can drop a trigger: a deployment that wants that too gives the hub's role only
INSERT and SELECT on audit_records and runs the purge as another role.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_POSTGRES_UP = [
    """
    CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND current_setting('onesignin.audit_purge', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit_records is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the retention purge deletes audit records.';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_records_append_only
    BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()
    """,
    """
    CREATE TRIGGER audit_records_no_truncate
    BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only()
    """,
]
_POSTGRES_DOWN = [
    "DROP TRIGGER IF EXISTS audit_records_no_truncate ON audit_records",
    "DROP TRIGGER IF EXISTS audit_records_append_only ON audit_records",
    "DROP FUNCTION IF EXISTS audit_records_append_only()",
]

_SQLITE_UP = [
    """
    CREATE TABLE audit_purge_gate (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        open INTEGER NOT NULL DEFAULT 0 CHECK (open IN (0, 1))
    )
    """,
    "INSERT INTO audit_purge_gate (id, open) VALUES (1, 0)",
    """
    CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
    BEGIN
        SELECT RAISE(ABORT, 'audit_records is append-only: UPDATE refused');
    END
    """,
    """
    CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
    WHEN (SELECT open FROM audit_purge_gate WHERE id = 1) IS NOT 1
    BEGIN
        SELECT RAISE(ABORT, 'audit_records is append-only: DELETE refused');
    END
    """,
    # The gate itself stays a single row.
    """
    CREATE TRIGGER audit_purge_gate_stays BEFORE DELETE ON audit_purge_gate
    BEGIN
        SELECT RAISE(ABORT, 'audit_purge_gate keeps its one row');
    END
    """,
]
_SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_purge_gate_stays",
    "DROP TRIGGER IF EXISTS audit_records_no_delete",
    "DROP TRIGGER IF EXISTS audit_records_no_update",
    "DROP TABLE IF EXISTS audit_purge_gate",
]


def _run(statements: list[str]) -> None:
    for statement in statements:
        op.execute(sa.text(statement))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _run(_POSTGRES_UP)
    else:
        _run(_SQLITE_UP)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _run(_POSTGRES_DOWN)
    else:
        _run(_SQLITE_DOWN)
