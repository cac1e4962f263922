"""What a schema looks like in the live catalog, saved at apply time to detect drift later.

A snapshot is taken after every run for each schema the run changed, keyed by the schema's
revision; verify compares the live catalog with the snapshot of the revision it is at.
"""

from __future__ import annotations

import json
from functools import cache

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

SNAPSHOT_TABLE = "alembic_schema_snapshot"
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
     WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT c.relname = ANY(:own)), '{}'::jsonb),
  'columns', COALESCE((
    SELECT jsonb_object_agg(c.relname || '.' || a.attname,
             format_type(a.atttypid, a.atttypmod)
             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END)
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND a.attnum > 0 AND NOT a.attisdropped AND NOT c.relname = ANY(:own)), '{}'::jsonb),
  'indexes', COALESCE((
    SELECT jsonb_object_agg(ic.relname, pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
     WHERE n.nspname = :schema AND NOT tc.relname = ANY(:own)), '{}'::jsonb),
  'constraints', COALESCE((
    SELECT jsonb_object_agg(c.relname || '.' || k.conname, pg_get_constraintdef(k.oid))
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
      JOIN pg_namespace n ON n.oid = k.connamespace
     WHERE n.nspname = :schema AND NOT c.relname = ANY(:own)), '{}'::jsonb)
)
"""
_INVALID_INDEXES = """
SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = ic.relnamespace
 WHERE n.nspname = :schema AND NOT i.indisvalid ORDER BY 1
"""
_KINDS = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
}


def snapshot(conn: sa.Connection, schema: str) -> Snapshot:
    """The schema's relations, columns, indexes and constraints, as plain strings."""
    value = conn.scalar(sa.text(_SNAPSHOT), {"schema": schema, "own": list(_OWN_TABLES)})
    return json.loads(value) if isinstance(value, str) else dict(value)


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


def invalid_indexes(conn: sa.Connection, schema: str) -> list[str]:
    """Indexes left INVALID, e.g. by a failed CREATE INDEX CONCURRENTLY."""
    return list(conn.scalars(sa.text(_INVALID_INDEXES), {"schema": schema}))


@cache
def snapshot_table(audit_schema: str) -> sa.Table:
    return sa.Table(
        SNAPSHOT_TABLE,
        sa.MetaData(),
        sa.Column("schema_name", sa.String(63), primary_key=True),
        sa.Column("revision", sa.String(255), primary_key=True),
        sa.Column("snapshot", JSONB, nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        schema=audit_schema,
    )


@cache
def create_sql(audit_schema: str) -> str:
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    table = snapshot_table(audit_schema)
    return str(CreateTable(table, if_not_exists=True).compile(dialect=postgresql.dialect()))


def save(
    conn: sa.Connection, audit_schema: str, schema: str, revision: str | None, expected: Snapshot
) -> None:
    """Store ``expected`` as the reference of ``schema`` at ``revision``."""
    conn.exec_driver_sql(create_sql(audit_schema))
    conn.execute(
        sa.text(
            f'INSERT INTO "{audit_schema}".{SNAPSHOT_TABLE} (schema_name, revision, snapshot) '
            "VALUES (:schema, :revision, CAST(:snapshot AS jsonb)) "
            "ON CONFLICT (schema_name, revision) DO UPDATE "
            "SET snapshot = EXCLUDED.snapshot, taken_at = now()"
        ),
        {"schema": schema, "revision": revision or BASE, "snapshot": json.dumps(expected)},
    )


def save_live(conn: sa.Connection, audit_schema: str, schema: str, revision: str | None) -> None:
    """Store the live catalog of ``schema`` as its reference at ``revision`` (a baseline)."""
    save(conn, audit_schema, schema, revision, snapshot(conn, schema))


def load(
    conn: sa.Connection, audit_schema: str, schema: str, revision: str | None
) -> Snapshot | None:
    """The reference stored for ``schema`` at ``revision``, None when there is none."""
    where = f'"{audit_schema}".{SNAPSHOT_TABLE}'
    if conn.scalar(sa.text("SELECT to_regclass(:t) IS NULL"), {"t": where}):
        return None
    value = conn.scalar(
        sa.text(f"SELECT snapshot FROM {where} WHERE schema_name = :schema AND revision = :rev"),
        {"schema": schema, "rev": revision or BASE},
    )
    if value is None:
        return None
    return json.loads(value) if isinstance(value, str) else dict(value)
