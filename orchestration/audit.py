"""The audit table alembic_version_history: a superset of Audit-Alembic's columns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa

TABLE_NAME = "alembic_version_history"

# Operations and directions, as Audit-Alembic spells them (plus rollback and verify).
MIGRATION, ROLLBACK, STAMP, VERIFY = "migration", "rollback", "stamp", "verify"
# A reference accepted by hand (`migrate baseline`): the catalog as it is, and the file
# checksums of the applied revisions, become what verify compares with.
BASELINE = "baseline"
UPGRADE, DOWNGRADE = "upgrade", "downgrade"


@dataclass
class AuditRow:
    """One step, as written to (and read from) alembic_version_history."""

    operation: str
    alembic_version: str | None
    prev_alembic_version: str | None
    operation_direction: str | None
    schema_name: str | None
    environment: str | None
    success: bool
    user_version: str | None = None
    revision_checksum: str | None = None
    executed_by: str | None = None
    run_id: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    message: str | None = None  # the revision's message; shown, not stored
    sql: list[str] | None = None  # the statements the step ran; shown, not stored
    id: int | None = None
    changed_at: datetime | None = None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["changed_at"] = self.changed_at.isoformat() if self.changed_at else None
        return data


@cache
def audit_table(schema: str) -> sa.Table:
    """The table's definition in ``schema`` (one MetaData each: the schema is configurable)."""
    return sa.Table(
        TABLE_NAME,
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("alembic_version", sa.String(255)),
        sa.Column("prev_alembic_version", sa.String(255)),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("operation_direction", sa.String(16)),
        sa.Column("user_version", sa.String(255)),
        sa.Column(
            "changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("schema_name", sa.String(63)),
        sa.Column("environment", sa.String(63)),
        sa.Column("revision_checksum", sa.String(64)),
        sa.Column("executed_by", sa.String(255)),
        sa.Column("run_id", sa.String(64)),
        sa.Column("duration_ms", sa.Float),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.Index(f"ix_{TABLE_NAME}_schema_version", "schema_name", "alembic_version"),
        schema=schema,
    )


# The row's fields that are columns the runner writes (id and changed_at come from the
# server); read off the dataclass, so importing this module builds no Table.
_STORED = tuple(
    f.name
    for f in dataclasses.fields(AuditRow)
    if f.name not in ("id", "changed_at", "message", "sql")
)


@cache
def create_sql(schema: str) -> str:
    """CREATE ... IF NOT EXISTS for the schema, table and index: one round trip, no reflection."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    table = audit_table(schema)
    dialect = postgresql.dialect()
    statements = [f'CREATE SCHEMA IF NOT EXISTS "{schema}"'] if schema != "public" else []
    statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
    statements += [
        str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
        for index in table.indexes
    ]
    return ";\n".join(s.strip() for s in statements)


def ensure_table(conn: sa.Connection, schema: str) -> None:
    """Create the table (and its schema) on first use."""
    conn.exec_driver_sql(create_sql(schema))


@cache
def _insert_sql(schema: str, prefix: str = "") -> str:
    # Plain driver SQL, built once: a Core insert per step cost ~0.6 ms of compiling.
    columns = ", ".join(_STORED)
    values = ", ".join(f"%({prefix}{name})s" for name in _STORED)
    return (
        f'INSERT INTO "{schema}".{TABLE_NAME} ({columns}) VALUES ({values}) '
        "RETURNING id, changed_at"
    )


_CTE = "migrate_audit_row"
_PREFIX = "migrate_audit_"


def printable(text: str) -> str:
    """Text PostgreSQL can store and a terminal can show: NUL bytes and lone surrogates
    (which a driver or a revision may put in an error) spelled out instead of failing."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _values(row: AuditRow, prefix: str = "") -> dict:
    values = {}
    for name in _STORED:
        value = getattr(row, name)
        values[f"{prefix}{name}"] = printable(value) if isinstance(value, str) else value
    return values


def insert_before(statement: str, parameters: dict, schema: str, row: AuditRow) -> tuple[str, dict]:
    """``statement`` (one INSERT, UPDATE or DELETE) preceded by the insert of ``row``, as a
    data-modifying CTE: both in one round trip. The statement then returns the row's id
    and time (read them with ``fetch_inserted``); its row count is unchanged."""
    sql = (
        f"WITH {_CTE} AS ({_insert_sql(schema, _PREFIX)}) {statement} "
        f"RETURNING (SELECT id FROM {_CTE}), (SELECT changed_at FROM {_CTE})"
    )
    return sql, {**parameters, **_values(row, _PREFIX)}


def fetch_inserted(cursor: Any, row: AuditRow) -> None:
    """After ``insert_before``'s statement ran on ``cursor``: fill in id and time."""
    inserted = cursor.fetchone()  # no round trip: the driver holds the result already
    if inserted is not None:
        row.id, row.changed_at = inserted


def insert_row(conn: sa.Connection, schema: str, row: AuditRow) -> AuditRow:
    """Insert ``row`` on ``conn`` (inside the caller's transaction); fill in id and time."""
    values = _values(row)
    # The DBAPI cursor: one round trip, without SQLAlchemy's per-statement bookkeeping.
    # SQLAlchemy must know a transaction is open, or the caller's commit() would do nothing.
    if not conn.in_transaction():
        conn.begin()
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_insert_sql(schema), values)
        inserted = cursor.fetchone()
        assert inserted is not None  # RETURNING always gives the row
        row.id, row.changed_at = inserted
    finally:
        cursor.close()
    return row


def table_exists(conn: sa.Connection, schema: str) -> bool:
    return sa.inspect(conn).has_table(TABLE_NAME, schema=schema)


def recent_rows(
    conn: sa.Connection,
    schema: str,
    *,
    limit: int = 20,
    environment: str | None = None,
    schema_names: list[str] | None = None,
) -> list[AuditRow]:
    """The newest rows first, optionally for some schemas only."""
    if not table_exists(conn, schema):
        return []
    table = audit_table(schema)
    query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
    if environment:
        query = query.where(table.c.environment == environment)
    if schema_names:
        query = query.where(table.c.schema_name.in_(schema_names))
    return [AuditRow(**row._asdict()) for row in conn.execute(query)]


def applied_checksums(conn: sa.Connection, schema: str, schema_name: str) -> dict[str, str | None]:
    """revision -> checksum of the file when it was last applied (or baselined).

    The table must exist (ensure_table): a reflection query here cost more than the query.
    """
    table = audit_table(schema)
    query = (
        sa.select(table.c.alembic_version, table.c.revision_checksum)
        .where(
            table.c.schema_name == schema_name,
            table.c.operation.in_((MIGRATION, BASELINE)),
            table.c.success.is_(True),
        )
        .order_by(table.c.id)
    )
    return {version: checksum for version, checksum in conn.execute(query)}
