"""What a schema looks like in the live catalog, saved at apply time to detect drift later.

A snapshot is taken after every run for each schema the run changed, keyed by the schema's
revision; verify compares the live catalog with the snapshot of the revision it is at.

The reads take a SQLAlchemy Connection or a DB-API cursor (psycopg2's, for verify's fast
path), with the same driver SQL: importing this module imports no SQLAlchemy.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

SNAPSHOT_TABLE = "alembic_schema_snapshot"
# The layout of this project's tables (this one and audit.TABLE_NAME) in this release: the
# first line of each table's COMMENT. A table without it predates versioning (layout 0).
LAYOUT_VERSION = 1
_MARK = re.compile(r"migrate layout (\d+) ([a-z][a-z-]*)")
# Without these a table of this name is not ours; other columns are added when missing.
SNAPSHOT_REQUIRED = frozenset({"schema_name", "revision", "snapshot"})
CATEGORIES = ("relations", "columns", "indexes", "constraints")
Snapshot = dict[str, dict[str, str]]  # category -> name -> definition
BASE = "base"
# Our own bookkeeping tables are not part of any schema's expected shape.
_OWN_TABLES = ("alembic_version", "alembic_version_history", SNAPSHOT_TABLE)

# The whole snapshot in one query: relations, columns, indexes and constraints as JSON.
_SNAPSHOT = """
SELECT jsonb_build_object(
  'relations', COALESCE((
    SELECT jsonb_object_agg(c.relname, CASE c.relkind
             WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
             WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' ELSE 'foreign table' END)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT c.relname = ANY(%(own)s)
       -- nor the sequences our tables own (the audit table's identity)
       AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype IN ('a', 'i') AND t.relname = ANY(%(own)s))),
     '{}'::jsonb),
  'columns', COALESCE((
    SELECT jsonb_object_agg(c.relname || '.' || a.attname,
             format_type(a.atttypid, a.atttypmod)
             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END)
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND a.attnum > 0 AND NOT a.attisdropped AND NOT c.relname = ANY(%(own)s)), '{}'::jsonb),
  'indexes', COALESCE((
    SELECT jsonb_object_agg(ic.relname, pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
     WHERE n.nspname = %(schema)s AND NOT tc.relname = ANY(%(own)s)), '{}'::jsonb),
  'constraints', COALESCE((
    SELECT jsonb_object_agg(c.relname || '.' || k.conname, pg_get_constraintdef(k.oid))
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
      JOIN pg_namespace n ON n.oid = k.connamespace
     WHERE n.nspname = %(schema)s AND NOT c.relname = ANY(%(own)s)), '{}'::jsonb)
)
"""
_INVALID_INDEXES = """
SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = ic.relnamespace
 WHERE n.nspname = %(schema)s AND NOT i.indisvalid ORDER BY 1
"""
_KINDS = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
}


Reader = Any  # a SQLAlchemy Connection, or a DB-API cursor


def rows(conn: Reader, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of driver SQL (psycopg2's ``%(name)s`` parameters) on a SQLAlchemy
    Connection (exec_driver_sql: the values are the driver's either way) or a cursor."""
    execute = getattr(conn, "exec_driver_sql", None)
    if execute is not None:
        return [tuple(row) for row in execute(sql, parameters)]
    conn.execute(sql, parameters)
    return list(conn.fetchall())


def _json(value: Any) -> Snapshot:
    return json.loads(value) if isinstance(value, str) else dict(value)


def snapshot(conn: Reader, schema: str) -> Snapshot:
    """The schema's relations, columns, indexes and constraints, as plain strings."""
    [(value,)] = rows(conn, _SNAPSHOT, {"schema": schema, "own": list(_OWN_TABLES)})
    return _json(value)


def schema_exists(conn: Reader, schema: str) -> bool:
    return bool(rows(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %(s)s", {"s": schema}))


def diff(expected: Snapshot, live: Snapshot) -> list[str]:
    """Human sentences for every difference between a snapshot and the live schema."""
    found = []
    for category in CATEGORIES:
        want, have = expected.get(category, {}), live.get(category, {})
        noun = category.rstrip("s") if category != "indexes" else "index"
        for name in sorted(want.keys() - have.keys()):
            found.append(f"{noun} {name} is missing (dropped outside migrations)")
        for name in sorted(have.keys() - want.keys()):
            found.append(f"{noun} {name} exists but no migration created it")
        for name in sorted(want.keys() & have.keys()):
            if want[name] != have[name]:
                found.append(
                    f"{noun} {name} changed: expected {want[name]!r}, found {have[name]!r}"
                )
    return found


def carry(expected: Snapshot, before: Snapshot, after: Snapshot) -> Snapshot:
    """The reference after a run: ``expected`` (the reference before it) changed exactly
    where the run changed the live catalog (``before`` -> ``after``). Whatever differed by
    hand before the run still differs afterwards: drift is never adopted by migrating."""
    carried: Snapshot = {}
    for category in CATEGORIES:
        was, now = before.get(category, {}), after.get(category, {})
        result = dict(expected.get(category, {}))
        for name in was.keys() | now.keys():
            if was.get(name) != now.get(name):
                if name in now:
                    result[name] = now[name]
                else:
                    result.pop(name, None)
        carried[category] = result
    return carried


def invalid_indexes(conn: Reader, schema: str) -> list[str]:
    """Indexes left INVALID, e.g. by a failed CREATE INDEX CONCURRENTLY."""
    return [name for (name,) in rows(conn, _INVALID_INDEXES, {"schema": schema})]


@cache
def snapshot_table(audit_schema: str) -> sa.Table:
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.Table(
        SNAPSHOT_TABLE,
        sa.MetaData(),
        sa.Column("schema_name", sa.String(63), primary_key=True),
        sa.Column("revision", sa.String(255), primary_key=True),
        sa.Column("snapshot", JSONB, nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        schema=audit_schema,
    )


def layout_mark(kind: str, version: int) -> str:
    """The first line of the COMMENT of a table of ours: its kind and layout version."""
    return f"migrate layout {version} {kind}"


def parse_layout_mark(comment: str | None) -> tuple[str, int] | None:
    """(kind, version) from a table's COMMENT, None when it has no mark of ours."""
    found = _MARK.fullmatch((comment or "").partition("\n")[0].strip())
    return (found.group(2), int(found.group(1))) if found else None


@cache
def create_sql(audit_schema: str) -> str:
    """The snapshot table, created and marked with its layout when it is missing: one round
    trip, no catalog write when it is there (audit.ensure_table checks its layout)."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    table = snapshot_table(audit_schema)
    where = f'"{audit_schema}".{SNAPSHOT_TABLE}'
    create = str(CreateTable(table, if_not_exists=True).compile(dialect=postgresql.dialect()))
    return (
        f"DO $migrate$ BEGIN IF to_regclass('{where}') IS NULL THEN\n{create.strip()};\n"
        f"COMMENT ON TABLE {where} IS '{layout_mark('own', LAYOUT_VERSION)}';\n"
        "END IF; END $migrate$"
    )


def upgrade_sql(audit_schema: str, columns: set[str]) -> str:
    """An older snapshot table brought to this release's layout in place: the columns it
    lacks added (nullable: its rows keep theirs), then marked."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    where = f'"{audit_schema}".{SNAPSHOT_TABLE}'
    add = [
        f"ADD COLUMN IF NOT EXISTS {c.name} {c.type.compile(dialect=dialect)}"
        for c in snapshot_table(audit_schema).columns
        if c.name not in columns
    ]
    statements = [f"ALTER TABLE {where} {', '.join(add)}"] if add else []
    statements.append(f"COMMENT ON TABLE {where} IS '{layout_mark('own', LAYOUT_VERSION)}'")
    return ";\n".join(statements)


def save(
    conn: sa.Connection, audit_schema: str, schema: str, revision: str | None, expected: Snapshot
) -> None:
    """Store ``expected`` as the reference of ``schema`` at ``revision``."""
    conn.exec_driver_sql(create_sql(audit_schema))
    conn.exec_driver_sql(
        f'INSERT INTO "{audit_schema}".{SNAPSHOT_TABLE} (schema_name, revision, snapshot) '
        "VALUES (%(schema)s, %(revision)s, CAST(%(snapshot)s AS jsonb)) "
        "ON CONFLICT (schema_name, revision) DO UPDATE "
        "SET snapshot = EXCLUDED.snapshot, taken_at = now()",
        {"schema": schema, "revision": revision or BASE, "snapshot": json.dumps(expected)},
    )


def save_live(conn: sa.Connection, audit_schema: str, schema: str, revision: str | None) -> None:
    """Store the live catalog of ``schema`` as its reference at ``revision`` (a baseline)."""
    save(conn, audit_schema, schema, revision, snapshot(conn, schema))


def load(conn: Reader, audit_schema: str, schema: str, revision: str | None) -> Snapshot | None:
    """The reference stored for ``schema`` at ``revision``, None when there is none."""
    where = f'"{audit_schema}".{SNAPSHOT_TABLE}'
    if rows(conn, "SELECT 1 WHERE to_regclass(%(t)s) IS NULL", {"t": where}):
        return None
    found = rows(
        conn,
        f"SELECT snapshot FROM {where} WHERE schema_name = %(schema)s AND revision = %(rev)s",
        {"schema": schema, "rev": revision or BASE},
    )
    return _json(found[0][0]) if found else None
