"""The audit table alembic_version_history: a superset of Audit-Alembic's columns.

The table in a database has a *layout*, found once per command (``ensure_table``: one
catalog query, DDL only when something must change) and kept on the connection:

- ``own``: the table this project creates. Its layout version is the first line of the
  table's COMMENT (``migrate layout 1 own``); a table without it predates versioning and
  is upgraded in place (missing columns added, rows untouched, marked).
- ``audit-alembic``: the table Audit-Alembic 0.2 created (``operation_type``, directions
  ``up``/``down``, ``changed_at`` without time zone, NOT NULL columns, a CHECK that one of
  the versions is not null). It is taken over in place: its columns and rows stay as they
  are, ours are added next to them, and new rows fill both sets of columns in its
  conventions, so Audit-Alembic itself can keep writing. Reading maps its columns to ours.
- anything else (a table of the same name we cannot read, a newer layout): one
  ConfigurationError, before anything is changed.

The insert SQL of each layout is built once; a step's row costs what it did before.
Importing this module imports no SQLAlchemy (verify's fast path writes its row with
psycopg2 alone): the functions that build SQLAlchemy objects import it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from dagster_alembic import catalog
from dagster_alembic.errors import ConfigurationError

if TYPE_CHECKING:
    import sqlalchemy as sa

TABLE_NAME = "alembic_version_history"

# Operations and directions, as Audit-Alembic spells them (plus rollback and verify).
MIGRATION, ROLLBACK, STAMP, VERIFY = "migration", "rollback", "stamp", "verify"
# A reference accepted by hand (`migrate baseline`): the catalog as it is, and the file
# checksums of the applied revisions, become what verify compares with.
BASELINE = "baseline"
UPGRADE, DOWNGRADE = "upgrade", "downgrade"

# The layout of this project's tables in this release. A release that only adds nullable
# columns keeps the number: ensure_table adds what a database lacks (rows untouched, old
# rows null there), and an older release still reads and writes the table, leaving them
# null. The number rises when an older release could no longer use the table correctly:
# it then refuses the table instead of writing rows this release would misread.
LAYOUT_VERSION = catalog.LAYOUT_VERSION
OWN, AUDIT_ALEMBIC = "own", "audit-alembic"
# Audit-Alembic's direction for a row that has none (verify, baseline): its column is
# NOT NULL and takes `up`/`down` only for steps.
NO_DIRECTION = "none"


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
    # {rule: reason} of the revision's own squawk_ignore (lint.py), for an upgrade step: why
    # it was let through lint. Added after layout 1 (jsonb, null in older rows).
    squawk_ignore: dict[str, str] | None = None
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
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import JSONB

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
        sa.Column("squawk_ignore", JSONB),
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
# Without these a table of our name is not one we can continue (an own table before
# versioning always had them); every other column of ours is added when missing.
_OWN_REQUIRED = frozenset(
    {"id", "alembic_version", "prev_alembic_version", "operation", "changed_at", "success"}
)
# Audit-Alembic 0.2's Auditor.create() with its default column names.
_AUDIT_ALEMBIC_COLUMNS = frozenset(
    {
        "id",
        "alembic_version",
        "prev_alembic_version",
        "operation_type",
        "operation_direction",
        "user_version",
        "changed_at",
    }
)


def _qualified(schema: str, table: str = TABLE_NAME) -> str:
    return f'"{schema}".{table}'


@cache
def create_sql(schema: str) -> str:
    """The schema, table and index, created (and marked with their layout) when the table
    is missing: one round trip, no reflection; a table already there is left as it is
    (ensure_table upgrades or takes it over)."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    table = audit_table(schema)
    dialect = postgresql.dialect()
    statements = [str(CreateTable(table, if_not_exists=True).compile(dialect=dialect))]
    statements += [
        str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
        for index in table.indexes
    ]
    statements.append(
        f"COMMENT ON TABLE {_qualified(schema)} IS '{catalog.layout_mark(OWN, LAYOUT_VERSION)}'"
    )
    body = ";\n".join(s.strip() for s in statements)
    create = (
        f"DO $migrate$ BEGIN IF to_regclass('{_qualified(schema)}') IS NULL THEN\n"
        f"{body};\nEND IF; END $migrate$"
    )
    if schema != "public":
        create = f'CREATE SCHEMA IF NOT EXISTS "{schema}";\n{create}'
    return create


# --- layouts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """alembic_version_history as it is in one database: what kind of table, which
    columns, and the SQL that writes a row into it (built once per layout)."""

    schema: str
    kind: str | None  # OWN, AUDIT_ALEMBIC, or None: no table yet
    columns: frozenset[str]
    naive_time: bool  # changed_at is `timestamp without time zone` (Audit-Alembic: UTC)
    version: int | None = None  # the layout version it is marked with

    @property
    def complete(self) -> bool:
        """Every column of ours is there: rows can be written."""
        return self.kind is not None and set(_STORED) <= self.columns

    def insert_sql(self, prefix: str = "") -> str:
        return _insert_sql_for(self, prefix)


_OWN_COLUMNS = frozenset(c for c in (*_STORED, "id", "changed_at"))


@cache
def own_layout(schema: str) -> Layout:
    """This release's own table, complete."""
    return Layout(schema, OWN, _OWN_COLUMNS, False, LAYOUT_VERSION)


@cache
def _insert_sql_for(layout: Layout, prefix: str) -> str:
    # Plain driver SQL, built once per layout: a Core insert per step cost ~0.6 ms.
    def param(name: str) -> str:
        return f"%({prefix}{name})s"

    table = _qualified(layout.schema)
    if layout.kind != AUDIT_ALEMBIC:
        names = ", ".join(_STORED)
        params = ", ".join(param(name) for name in _STORED)
        return f"INSERT INTO {table} ({names}) VALUES ({params}) RETURNING id, changed_at"
    # Audit-Alembic's conventions in its own columns: versions joined by `##`, '' for none
    # (its CHECK wants one of the two versions not null), `up`/`down`, operation_type
    # `migration` for both directions, changed_at in UTC without time zone.
    values = {name: param(name) for name in _STORED}
    for name in ("alembic_version", "prev_alembic_version"):
        values[name] = f"replace(COALESCE({param(name)}, ''), ',', '##')"
    values["operation_direction"] = (
        f"CASE {param('operation_direction')} WHEN '{UPGRADE}' THEN 'up' "
        f"WHEN '{DOWNGRADE}' THEN 'down' ELSE '{NO_DIRECTION}' END"
    )
    values["operation_type"] = (
        f"CASE {param('operation')} WHEN '{ROLLBACK}' THEN '{MIGRATION}' "
        f"ELSE {param('operation')} END"
    )
    now, changed_at = "now()", "changed_at"
    if layout.naive_time:
        now, changed_at = "now() AT TIME ZONE 'UTC'", "changed_at AT TIME ZONE 'UTC' AS changed_at"
    values["changed_at"] = now
    return (
        f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(values.values())}) "
        f"RETURNING id, {changed_at}"
    )


# Both tables of ours in the audit schema, in one query: kind, comment, and per column
# its type and whether it is NOT NULL with nothing to fill it (no default, no identity).
_INSPECT = f"""(SELECT COALESCE(json_object_agg(c.relname, json_build_object(
    'relkind', c.relkind,
    'comment', obj_description(c.oid, 'pg_class'),
    'columns', (SELECT COALESCE(json_object_agg(a.attname, json_build_array(
                    format_type(a.atttypid, a.atttypmod),
                    a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
                    AND a.attgenerated = '')), '{{}}')
                  FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))), '{{}}')
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = %(migrate_audit_schema)s
    AND c.relname IN ('{TABLE_NAME}', '{catalog.SNAPSHOT_TABLE}'))"""


@dataclass(frozen=True)
class _Found:
    """One table of ours as the catalog shows it."""

    relkind: str
    comment: str | None
    columns: dict[str, tuple[str, bool]]  # name -> (type, NOT NULL with nothing to fill it)


def _found(tables: Any) -> dict[str, _Found]:
    return {
        name: _Found(
            t["relkind"], t["comment"], {k: (v[0], bool(v[1])) for k, v in t["columns"].items()}
        )
        for name, t in (tables or {}).items()
    }


def probed_layout(schema: str, probe: Any) -> Layout:
    """The layout of the table the probe (``SELECT`` of _INSPECT) found, as ensure_table
    classifies it; a table we cannot use is a ConfigurationError."""
    return _classify(schema, _found(probe).get(TABLE_NAME))


def _unusable(schema: str, table: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"table {schema}.{table} is not one this release of the migration pipeline can "
        f"use: {why}; nothing was changed (rename that table, or set [audit] schema in "
        "migrate.toml to another schema)"
    )


def _newer(schema: str, table: str, version: int) -> ConfigurationError:
    return ConfigurationError(
        f"table {schema}.{table} has layout {version}, written by a newer release of the "
        f"migration pipeline (this one knows layout {LAYOUT_VERSION}): upgrade the "
        "pipeline; nothing was changed"
    )


def _classify(schema: str, found: _Found | None, *, writing: bool = True) -> Layout:
    """What alembic_version_history is, or a ConfigurationError for one we cannot use
    (for ``writing``: also one with a NOT NULL column our rows cannot fill)."""
    if found is None:
        return Layout(schema, None, frozenset(), False)
    if found.relkind not in ("r", "p"):
        raise _unusable(schema, TABLE_NAME, "it is not a table")
    columns = frozenset(found.columns)
    mark = catalog.parse_layout_mark(found.comment)
    if mark is not None and mark[1] > LAYOUT_VERSION:
        raise _newer(schema, TABLE_NAME, mark[1])
    if mark is not None and mark[0] not in (OWN, AUDIT_ALEMBIC):
        raise _unusable(schema, TABLE_NAME, f"its comment names an unknown layout {mark[0]!r}")
    kind = mark[0] if mark else None
    if kind is None:  # before versioning, or written by Audit-Alembic
        kind = AUDIT_ALEMBIC if "operation_type" in columns else OWN
    required = _AUDIT_ALEMBIC_COLUMNS if kind == AUDIT_ALEMBIC else _OWN_REQUIRED
    if missing := sorted(required - columns):
        what = "Audit-Alembic's" if kind == AUDIT_ALEMBIC else "an audit table's"
        raise _unusable(schema, TABLE_NAME, f"it lacks {what} column(s) {', '.join(missing)}")
    written = {*_STORED, "changed_at"} | ({"operation_type"} if kind == AUDIT_ALEMBIC else set())
    unfillable = sorted(n for n, (_, empty) in found.columns.items() if empty and n not in written)
    if unfillable and writing:
        raise _unusable(
            schema, TABLE_NAME, f"its NOT NULL column(s) {', '.join(unfillable)} have no default"
        )
    naive = found.columns["changed_at"][0] == "timestamp without time zone"
    return Layout(schema, kind, columns, naive, mark[1] if mark else None)


def _upgrade_sql(layout: Layout) -> tuple[str, Layout]:
    """The DDL that brings the table to this release's layout (empty when it is there)."""
    schema = layout.schema
    if layout.kind is None:
        return create_sql(schema), own_layout(schema)
    if layout.version == LAYOUT_VERSION and layout.complete:
        return "", layout
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    table = audit_table(schema)
    add = [
        f"ADD COLUMN IF NOT EXISTS {c.name} {c.type.compile(dialect=dialect)}"
        for c in table.columns
        if c.name not in layout.columns
    ]
    statements = [f"ALTER TABLE {_qualified(schema)} {', '.join(add)}"] if add else []
    statements.append(
        f"CREATE INDEX IF NOT EXISTS ix_{TABLE_NAME}_schema_version "
        f"ON {_qualified(schema)} (schema_name, alembic_version)"
    )
    statements.append(f"COMMENT ON TABLE {_qualified(schema)} IS %(migrate_audit_comment)s")
    upgraded = dataclasses.replace(
        layout, columns=layout.columns | {c.name for c in table.columns}, version=LAYOUT_VERSION
    )
    return ";\n".join(statements), upgraded


def _snapshot_sql(schema: str, found: _Found | None) -> str:
    """The snapshot table: created, or upgraded and marked, or one ConfigurationError."""
    name = catalog.SNAPSHOT_TABLE
    if found is None:
        return catalog.create_sql(schema)
    if found.relkind not in ("r", "p"):
        raise _unusable(schema, name, "it is not a table")
    mark = catalog.parse_layout_mark(found.comment)
    if mark is not None and mark[1] > LAYOUT_VERSION:
        raise _newer(schema, name, mark[1])
    if mark is not None and mark[0] != OWN:
        raise _unusable(schema, name, f"its comment names an unknown layout {mark[0]!r}")
    columns = set(found.columns)
    if missing := sorted(catalog.SNAPSHOT_REQUIRED - columns):
        raise _unusable(schema, name, f"it lacks the column(s) {', '.join(missing)}")
    table = catalog.snapshot_table(schema)
    unfillable = sorted(
        n for n, (_, empty) in found.columns.items() if empty and n not in table.columns
    )
    if unfillable:
        raise _unusable(
            schema, name, f"its NOT NULL column(s) {', '.join(unfillable)} have no default"
        )
    if mark is not None and mark[1] == LAYOUT_VERSION and columns >= set(table.columns.keys()):
        return ""
    return catalog.upgrade_sql(schema, columns)


def _comment(found: _Found | None, kind: str) -> str:
    """The layout mark, followed by whatever comment the table had that was not ours."""
    old = (found.comment or "") if found else ""
    if catalog.parse_layout_mark(old) is not None:
        old = old.partition("\n")[2]
    mark = catalog.layout_mark(kind, LAYOUT_VERSION)
    return f"{mark}\n{old}" if old else mark


_LAYOUT_KEY = "migrate_audit_layout"


def ensure_table_with(
    conn: sa.Connection, schema: str, select: str, parameters: Mapping[str, Any]
) -> tuple[Layout, tuple[Any, ...]]:
    """ensure_table, and the caller's own one-row ``select`` (psycopg2 ``%(name)s``
    parameters) in the same round trip: runs the select, finds the layout of both tables,
    then (only when needed, in a second round trip, after the select's settings took
    effect) creates, upgrades in place or takes over. Returns the layout and the select's
    row. A table that cannot be used raises ConfigurationError before anything changes."""
    sql = f"SELECT caller.*, {_INSPECT} AS migrate_audit_tables FROM ({select}) AS caller"
    row = conn.exec_driver_sql(sql, {**parameters, "migrate_audit_schema": schema}).one()
    found = _found(row[-1])
    history = found.get(TABLE_NAME)
    layout = _classify(schema, history)
    snapshots = _snapshot_sql(schema, found.get(catalog.SNAPSHOT_TABLE))
    ddl, layout = _upgrade_sql(layout)
    statements = [s for s in (ddl, snapshots) if s]
    if statements:
        conn.exec_driver_sql(
            ";\n".join(statements),
            {"migrate_audit_comment": _comment(history, layout.kind or OWN)},
        )
    conn.info[(_LAYOUT_KEY, schema)] = layout
    return layout, tuple(row)[:-1]


def ensure_table(conn: sa.Connection, schema: str) -> Layout:
    """Create the table (and its schema) on first use; upgrade an older layout, or take over
    Audit-Alembic's table, in place. One query when nothing needs to change."""
    return ensure_table_with(conn, schema, "SELECT 1", {})[0]


def read_layout(conn: sa.Connection, schema: str) -> Layout:
    """The table's layout as it is (one query), changing nothing: readers of a database
    not upgraded yet (an Audit-Alembic table, an own table before versioning) still work."""
    tables = conn.exec_driver_sql(f"SELECT {_INSPECT}", {"migrate_audit_schema": schema}).scalar()
    return _classify(schema, _found(tables).get(TABLE_NAME), writing=False)


def layout_of(conn: sa.Connection, schema: str) -> Layout:
    """The layout ensure_table found on this connection (a dict lookup: what each step's
    row uses); ensure_table now when it has not run on this connection."""
    layout: Layout | None = conn.info.get((_LAYOUT_KEY, schema))
    return layout if layout is not None else ensure_table(conn, schema)


# --- writing -------------------------------------------------------------------------------

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
        if isinstance(value, dict):  # jsonb, sent as text: PostgreSQL casts the literal
            value = json.dumps(value, sort_keys=True)
        values[f"{prefix}{name}"] = printable(value) if isinstance(value, str) else value
    return values


def _layout(layout: Layout | str) -> Layout:
    return own_layout(layout) if isinstance(layout, str) else layout


def insert_before(
    statement: str, parameters: dict, layout: Layout | str, row: AuditRow
) -> tuple[str, dict]:
    """``statement`` (one INSERT, UPDATE or DELETE) preceded by the insert of ``row``, as a
    data-modifying CTE: both in one round trip. The statement then returns the row's id
    and time (read them with ``fetch_inserted``); its row count is unchanged.

    ``layout``: the table's (``layout_of(conn, schema)``); a schema name means this
    release's own table."""
    found = _layout(layout)
    sql = (
        f"WITH {_CTE} AS ({found.insert_sql(_PREFIX)}) {statement} "
        f"RETURNING (SELECT id FROM {_CTE}), (SELECT changed_at FROM {_CTE})"
    )
    return sql, {**parameters, **_values(row, _PREFIX)}


def fetch_inserted(cursor: Any, row: AuditRow) -> None:
    """After ``insert_before``'s statement ran on ``cursor``: fill in id and time."""
    inserted = cursor.fetchone()  # no round trip: the driver holds the result already
    if inserted is not None:
        row.id, row.changed_at = inserted


def insert_row(conn: sa.Connection, layout: Layout | str, row: AuditRow) -> AuditRow:
    """Insert ``row`` on ``conn`` (inside the caller's transaction); fill in id and time.
    ``layout`` as a schema name: the layout ensure_table found on ``conn``."""
    found = layout_of(conn, layout) if isinstance(layout, str) else layout
    # The DBAPI cursor: one round trip, without SQLAlchemy's per-statement bookkeeping.
    # SQLAlchemy must know a transaction is open, or the caller's commit() would do nothing.
    if not conn.in_transaction():
        conn.begin()
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        return insert_with(cursor, found, row)
    finally:
        cursor.close()


def insert_with(cursor: Any, layout: Layout, row: AuditRow) -> AuditRow:
    """insert_row on a DB-API cursor, in its connection's transaction."""
    cursor.execute(layout.insert_sql(), _values(row))
    inserted = cursor.fetchone()
    assert inserted is not None  # RETURNING always gives the row
    row.id, row.changed_at = inserted
    return row


# --- reading -------------------------------------------------------------------------------


@cache
def _history(layout: Layout) -> sa.FromClause:
    """Our columns, whatever the layout: the table itself when it is complete, else a
    subquery that maps Audit-Alembic's columns to ours and fills what is missing."""
    import sqlalchemy as sa

    if layout.kind == OWN and layout.complete:
        return audit_table(layout.schema)
    types: dict[str, Any] = {
        "squawk_ignore": sa.JSON,
        "id": sa.BigInteger,
        "changed_at": sa.DateTime(timezone=True),
        "duration_ms": sa.Float,
        "success": sa.Boolean,
    }
    text = sa.text(_history_select(layout))
    typed = [sa.column(name, types.get(name, sa.String)) for name in _history_columns()]
    return text.columns(*typed).subquery(TABLE_NAME)


def _history_columns() -> tuple[str, ...]:
    return ("id", *_STORED, "changed_at")


@cache
def _history_select(layout: Layout) -> str:
    """_history's driver SQL: the layout's rows with our columns, in _history_columns()
    order."""

    def have(name: str) -> bool:
        return name in layout.columns

    def column(name: str) -> str:
        if have(name):
            return name
        from sqlalchemy.dialects import postgresql  # a column missing: not a complete table

        type_ = audit_table(layout.schema).c[name].type
        return f"CAST(NULL AS {type_.compile(dialect=postgresql.dialect())})"

    expressions = {name: column(name) for name in _history_columns()}
    if layout.kind == AUDIT_ALEMBIC:
        for name in ("alembic_version", "prev_alembic_version"):
            expressions[name] = f"NULLIF(replace({name}, '##', ','), '')"
        derived = (
            f"CASE WHEN operation_type = '{MIGRATION}' AND operation_direction = 'down' "
            f"THEN '{ROLLBACK}' ELSE operation_type END"
        )
        expressions["operation"] = (
            f"COALESCE(operation, {derived})" if have("operation") else derived
        )
        expressions["operation_direction"] = (
            f"CASE operation_direction WHEN 'up' THEN '{UPGRADE}' "
            f"WHEN 'down' THEN '{DOWNGRADE}' WHEN '{NO_DIRECTION}' THEN NULL "
            "ELSE operation_direction END"
        )
        # Audit-Alembic records steps that succeeded only (on_version_apply).
        expressions["success"] = "COALESCE(success, true)" if have("success") else "true"
    elif have("success"):
        expressions["success"] = "COALESCE(success, true)"
    if layout.naive_time:
        expressions["changed_at"] = "changed_at AT TIME ZONE 'UTC'"
    select = ", ".join(f"{sql} AS {name}" for name, sql in expressions.items())
    return f"SELECT {select} FROM {_qualified(layout.schema)}"


def history_table(conn: sa.Connection, schema: str) -> sa.FromClause | None:
    """The audit rows with our columns (``.c.operation``, ``.c.schema_name``, ...) for a
    query, whatever the table's layout; None when there is no table."""
    layout = read_layout(conn, schema)
    return None if layout.kind is None else _history(layout)


def table_exists(conn: sa.Connection, schema: str) -> bool:
    import sqlalchemy as sa

    return sa.inspect(conn).has_table(TABLE_NAME, schema=schema)


def recent_rows(
    conn: sa.Connection,
    schema: str,
    *,
    limit: int = 20,
    environment: str | None = None,
    schema_names: list[str] | None = None,
) -> list[AuditRow]:
    """The newest rows first, optionally for some schemas only (rows that name no schema,
    as Audit-Alembic's, belong to every schema's history)."""
    import sqlalchemy as sa

    table = history_table(conn, schema)
    if table is None:
        return []
    query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
    if environment:
        query = query.where(table.c.environment == environment)
    if schema_names:
        query = query.where(
            sa.or_(table.c.schema_name.in_(schema_names), table.c.schema_name.is_(None))
        )
    rows = []
    for found in conn.execute(query):
        row = AuditRow(**found._asdict())
        if row.changed_at is not None and row.changed_at.tzinfo is None:
            row.changed_at = row.changed_at.replace(tzinfo=UTC)
        rows.append(row)
    return rows


def applied_checksums(conn: sa.Connection, schema: str, schema_name: str) -> dict[str, str | None]:
    """revision -> checksum of the file when it was last applied (or baselined).

    The table must exist (ensure_table): its layout is the one found then, no query.
    """
    return applied_checksums_in(conn, layout_of(conn, schema), schema_name)


def applied_checksums_in(
    conn: catalog.Reader, layout: Layout, schema_name: str
) -> dict[str, str | None]:
    """applied_checksums for a layout known (verify's fast path: from its probe), on a
    SQLAlchemy Connection or a DB-API cursor."""
    if layout.kind is None:
        return {}
    sql = (
        f"SELECT alembic_version, revision_checksum FROM ({_history_select(layout)}) AS h "
        f"WHERE schema_name = %(schema_name)s AND operation IN ('{MIGRATION}', '{BASELINE}') "
        "AND success IS true ORDER BY id"
    )
    return dict(catalog.rows(conn, sql, {"schema_name": schema_name}))
