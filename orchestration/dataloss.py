"""Which rows a downgrade would destroy: decided by rehearsing it, not by reading its SQL.

The downgrade runs for real, step by step, inside one transaction that is then rolled
back. Around each step the catalog is read (tables by oid with their file node, columns
by number with their type, rows deleted so far in the transaction), so whatever removed
data is seen, however it was written: lists in one DROP, several DROP COLUMNs in one
ALTER, unqualified names under any search_path, CASCADE, DROP SCHEMA, TRUNCATE, DELETE,
type changes that rewrite a column. After the rollback, the rows at risk are counted.

Statements a revision runs in an autocommit block cannot run inside the rehearsal's
transaction; they are skipped there, and any of them that may remove rows is reported
as such (it cannot be counted).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dagster_alembic import sqltext

# Tables (plain and partitioned) outside the system schemas, with their columns and the
# rows this transaction deleted from them so far.
_STATE = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind::text, c.relfilenode::bigint,
       COALESCE(x.n_tup_del, 0)::bigint, COALESCE(x.n_tup_upd, 0)::bigint,
       COALESCE((SELECT json_agg(json_build_array(a.attnum, a.attname,
                                                  format_type(a.atttypid, a.atttypmod)))
                   FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_xact_user_tables x ON x.relid = c.oid
 WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname <> 'information_schema'
   AND n.nspname NOT LIKE 'pg\\_%'
"""
# The project's own bookkeeping changes on every downgrade by design.
_OWN_TABLES = {"alembic_version_history", "alembic_schema_snapshot"}


@dataclass(frozen=True)
class AtRisk:
    """Rows that a downgrade step would destroy."""

    revision: str
    what: str  # "table ecommerce.orders" or "column ecommerce.orders.note"
    rows: int | None  # None: the statement cannot be rehearsed, so nothing was counted

    def __str__(self) -> str:
        counted = f"{self.rows} row(s)" if self.rows is not None else "not rehearsed"
        return f"{self.what} ({counted}, reverting {self.revision})"


@dataclass(frozen=True)
class _Table:
    schema: str
    name: str
    kind: str  # r table, p partitioned table (its rows are its partitions'), m materialized view
    filenode: int
    deleted: int
    updated: int
    columns: dict[int, tuple[str, str]]  # attnum -> (name, type)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class _Removal:
    """Something a step removed, to be counted once the rehearsal is rolled back."""

    revision: str
    kind: str  # table, column, type, deleted, updated, rewritten
    table: _Table
    column: str | None = None
    detail: str = ""
    rows: int | None = None  # known in the rehearsal (rows deleted or updated)


class Rehearsal:
    """Watches a downgrade that runs in a transaction the caller rolls back.

    recorder.StepRecorder calls ``attach``, ``step_started``, ``statement`` and
    ``step_ended``; the caller, after the rollback, calls ``at_risk``.
    """

    def __init__(self) -> None:
        self.removals: list[_Removal] = []
        self.unrehearsed: list[tuple[str, str]] = []  # (revision, statement)
        self._dbapi: Any = None
        self._ignore: set[tuple[str | None, str]] = set()
        self._revision: str | None = None
        self._before: dict[int, _Table] = {}
        self._outside_transaction = False

    def attach(self, ctx: Any, version_table: tuple[str, str | None]) -> None:
        self._dbapi = ctx.connection.connection.dbapi_connection
        name, schema = version_table
        self._ignore = {(schema, name), *((None, t) for t in _OWN_TABLES)}
        # MigrationContext.autocommit_block would commit the rehearsal: stay inside it.
        ctx.autocommit_block = self._autocommit_block

    @contextmanager
    def _autocommit_block(self) -> Iterator[None]:
        self._outside_transaction = True
        try:
            yield
        finally:
            self._outside_transaction = False

    def statement(self, statement: str, parameters: Any) -> tuple[str, Any]:
        """A statement a step sends: those meant for an autocommit block are not run."""
        if not self._outside_transaction:
            return statement, parameters
        assert self._revision is not None
        self.unrehearsed += [(self._revision, s) for s in sqltext.destructive(statement)]
        return "SELECT 1", parameters

    def step_started(self, revision: str) -> None:
        self._revision = revision
        self._before = self._state()

    def step_ended(self) -> None:
        assert self._revision is not None
        after = self._state()
        for oid, table in self._before.items():
            if (table.schema, table.name) in self._ignore or (None, table.name) in self._ignore:
                continue
            self.removals += self._compare(self._revision, table, after.get(oid))

    def _compare(self, revision: str, table: _Table, now: _Table | None) -> list[_Removal]:
        if table.kind == "p":
            return []  # its rows live in its partitions, each watched on its own
        if now is None:
            return [_Removal(revision, "table", table)]
        found = []
        retyped = False
        for attnum, (column, type_) in table.columns.items():
            if attnum not in now.columns:
                found.append(_Removal(revision, "column", table, column))
            elif now.columns[attnum][1] != type_:
                retyped = True
                detail = f"{type_} -> {now.columns[attnum][1]}"
                found.append(_Removal(revision, "type", table, column, detail))
        if now.deleted > table.deleted:
            found.append(_Removal(revision, "deleted", table, rows=now.deleted - table.deleted))
        if now.updated > table.updated:  # values overwritten: the old ones are gone
            found.append(_Removal(revision, "updated", table, rows=now.updated - table.updated))
        if now.filenode != table.filenode and not retyped and table.kind != "m":
            # TRUNCATE, or a rewrite that may have changed any value (ALTER ... USING, a
            # TRUNCATE and refill): every row the table holds now is at stake
            found.append(_Removal(revision, "rewritten", table))
        return found

    def _state(self) -> dict[int, _Table]:
        cursor = self._dbapi.cursor()
        try:
            cursor.execute(_STATE)
            return {
                oid: _Table(
                    schema,
                    name,
                    kind,
                    filenode,
                    deleted,
                    updated,
                    {a: (n, t) for a, n, t in columns},
                )
                for oid, schema, name, kind, filenode, deleted, updated, columns in cursor
            }
        finally:
            cursor.close()

    def at_risk(self, conn: sa.Connection) -> list[AtRisk]:
        """After the rollback: the removals that would destroy rows, counted now."""
        found: list[AtRisk] = []
        for r in self.removals:
            where = _quoted(r.table.schema, r.table.name)
            if r.kind == "table":
                rows = _count(conn, f"SELECT count(*) FROM {where}")
                noun = "materialized view" if r.table.kind == "m" else "table"
                what = f"{noun} {r.table.qualified}"
            elif r.kind in ("column", "type"):
                rows = _count(conn, f"SELECT count({_quoted(r.column or '')}) FROM {where}")
                what = f"column {r.table.qualified}.{r.column}"
                if r.kind == "type":
                    what += f" (type {r.detail} rewrites its values)"
            elif r.kind == "deleted":
                rows, what = r.rows or 0, f"rows deleted from table {r.table.qualified}"
            elif r.kind == "updated":
                rows, what = r.rows or 0, f"rows overwritten in table {r.table.qualified}"
            else:
                rows = _count(conn, f"SELECT count(*) FROM {where}")
                what = f"table {r.table.qualified} (rewritten or emptied: TRUNCATE, USING)"
            if rows:
                found.append(AtRisk(r.revision, what, rows))
        for revision, statement in self.unrehearsed:
            short = " ".join(statement.split())[:120]
            found.append(AtRisk(revision, f"statement outside a transaction: {short}", None))
        return found


def _quoted(*names: str) -> str:
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


def _count(conn: sa.Connection, sql: str) -> int:
    try:
        with conn.begin():
            return int(conn.scalar(sa.text(sql)) or 0)
    except sa.exc.ProgrammingError:
        return 0  # created by an earlier step of the rehearsal: holds nothing now
