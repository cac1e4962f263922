"""Alembic's steps as audit rows: inside each step's transaction when it succeeds, on a
connection of its own when it fails; and the catalog around them, so drift stays drift."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script
from sqlalchemy.engine import URL
from sqlalchemy.sql.dml import UpdateBase

from dagster_alembic import audit, catalog, sqltext
from dagster_alembic.errors import MigrationError
from dagster_alembic.revisions import MigrationProject, Revision
from dagster_alembic.sessions import error_text
from dagster_alembic.settings import ProjectSettings

USER_VERSION_ENV = "MIGRATE_USER_VERSION"

FAILURE_ROW_RETRY_SECONDS = 15.0  # a server restarting mid-step is back within this
_FAILURE_ROW_TIMEOUTS = "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '10s'"


def _unreachable(exc: sa.exc.SQLAlchemyError) -> bool:
    """The server is away (restarting, shutting down), not refusing the row."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "pgcode", None)
    # no SQLSTATE at all: no server answered; 57P0x: shutting down, cannot connect now
    return isinstance(exc, sa.exc.OperationalError) and (code is None or code.startswith("57P"))


@dataclass
class SchemaBefore:
    """A schema as a run found it, before its first step: to keep drift reported."""

    revision: str | None
    live: catalog.Snapshot
    expected: catalog.Snapshot | None  # the reference stored for ``revision``, if any

    @property
    def reference(self) -> catalog.Snapshot:
        """What the schema should hold before the run: the stored reference; with none, at
        base nothing (what was there before any migration is not the migrations' work),
        elsewhere what is there (a database migrated before references were kept)."""
        if self.expected is not None:
            return self.expected
        return {} if self.revision is None else self.live


class StepRecorder:
    """Turns Alembic's steps into audit rows: inside each step's transaction on success,
    on a connection of its own after the rollback on failure."""

    def __init__(
        self,
        settings: ProjectSettings,
        *,
        environment: str,
        executed_by: str,
        run_id: str | None,
        url: URL | None,
        on_step: Callable[[audit.AuditRow], None] | None,
        rows: list[audit.AuditRow],
        project: MigrationProject | None = None,
        rehearsal: Any = None,
        warnings: list[str] | None = None,
    ):
        self.settings = settings
        self.environment = environment
        self.executed_by = executed_by
        self.run_id = run_id
        self.url = url
        self.on_step = on_step
        self.rows = rows
        self.current: Any = None  # the RevisionStep running now
        self.started = time.perf_counter()
        self.statements: list[str] = []  # what the current step ran
        self.version_table: tuple[str, str | None] = ("alembic_version", None)
        self._sent: audit.AuditRow | None = None  # the current step's row, already sent
        self._sent_by: Any = None  # the execution context that carried it
        self.project = project
        self.user_version = os.environ.get(USER_VERSION_ENV)
        # A downgrade rehearsed in a transaction that is rolled back (dataloss.Rehearsal):
        # no rows, no progress, and what each step removes is watched instead.
        self.rehearsal = rehearsal
        self.warnings = warnings if warnings is not None else []
        self.before: dict[str, SchemaBefore] = {}

    def track(self, migrations_fn: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
        """Wrap Alembic's step generator to know which step runs, and since when."""

        def tracked(heads: Any, ctx: MigrationContext) -> Iterator[Any]:
            if self.project is not None:  # heads as Alembic read them, under the lock
                self.project.check_known(tuple(heads), self.environment)
            self.version_table = (ctx.version_table, ctx.version_table_schema)
            if self.rehearsal is not None:
                self.rehearsal.attach(ctx, self.version_table)
            for step in migrations_fn(heads, ctx):
                self.current = None  # what runs between steps belongs to no step
                info = step.info
                revision = self._revision(info.up_revision)
                if self.rehearsal is not None:
                    self.rehearsal.step_started(revision.revision)
                elif ctx.connection is not None and revision.schema not in self.before:
                    self._remember(ctx.connection, revision.schema, self._from(info, revision))
                self.current, self.started = step, time.perf_counter()
                self.statements, self._sent = [], None
                yield step
            self.current = None

        return tracked

    def _from(self, info: MigrationInfo, revision: Revision) -> str | None:
        """Where the schema stands before this step (its first in the run): down_revision
        never crosses schemas (depends_on does), so it names the schema's own revision."""
        if info.is_upgrade:
            return revision.down_revisions[0] if revision.down_revisions else None
        return revision.revision

    def _remember(self, conn: sa.Connection, schema: str, revision: str | None) -> None:
        """The schema's catalog and stored reference before the run touches it. Drift found
        here is reported, and stays drift: the run's snapshot afterwards carries only what
        the run itself changed (catalog.carry), never adopts a change made by hand."""
        live = catalog.snapshot(conn, schema)
        expected = catalog.load(conn, self.settings.audit_schema, schema, revision)
        self.before[schema] = SchemaBefore(revision, live, expected)
        if expected is not None:
            for difference in catalog.diff(expected, live):
                self.warnings.append(
                    f"{schema}: drift found before migrating (it stays reported until "
                    f"`migrate baseline` accepts it): {difference}"
                )

    def before_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        """SQLAlchemy's hook (retval=True): keep the SQL of the step that runs, and send
        its audit row with Alembic's version-table statement, in the same round trip.

        The row's INSERT rides along as a CTE of that statement, so it commits or rolls
        back with the step, and costs no round trip of its own: on loopback that saves
        little (~0.1 ms a step, the insert itself costs the server ~0.2 ms), across a
        network a whole round trip per revision.
        """
        if self.current is None:
            return statement, parameters
        if not self._is_version_statement(context):
            self._refuse_transaction_control(statement)
            self.statements.append(statement.strip())
            if self.rehearsal is not None:
                return self.rehearsal.statement(statement, parameters)
            return statement, parameters
        self._check_still_in_transaction(conn)
        if (
            self.rehearsal is not None
            or self._sent is not None
            or executemany
            or not isinstance(parameters, dict)
            or "%" in statement  # would be read as a placeholder once parameters are added
            or context.compiled.effective_returning  # SQLAlchemy reads rows of its own
        ):
            return statement, parameters  # on_version_apply inserts the row itself
        self._sent = self._row(self.current.info, success=True)
        self._sent_by = context
        layout = audit.layout_of(conn, self.settings.audit_schema)
        return audit.insert_before(statement, parameters, layout, self._sent)

    def _refuse_transaction_control(self, statement: str) -> None:
        """A revision that ends its own transaction would leave the version update and
        audit row outside any transaction, claiming a step that may not have applied."""
        found = sqltext.transaction_control(statement)
        if found is not None:
            revision = self.current.info.up_revision_id if self.current else "?"
            keyword = found.split()[0].upper()
            # a savepoint forks the step's transaction (a ROLLBACK TO it undoes part of
            # the step, unseen by the audit); the others end it or change its settings
            effect = (
                "which would fork the step's transaction (a part undone unseen by the audit)"
                if keyword in ("SAVEPOINT", "RELEASE")
                else "which would end or change the step's transaction"
            )
            raise MigrationError(
                f"revision {revision} runs {keyword!r}, {effect}: refused before it ran. "
                "Put statements that must run outside a transaction in "
                "`with op.get_context().autocommit_block():`"
            )

    def _check_still_in_transaction(self, conn: Any) -> None:
        """The backstop for what the text check cannot see (a procedure that commits):
        the driver believes it is in the step's transaction, the server says it is not."""
        from psycopg2 import extensions

        dbapi = conn.connection.dbapi_connection
        if (
            dbapi is not None
            and dbapi.status == extensions.STATUS_BEGIN
            and dbapi.info.transaction_status == extensions.TRANSACTION_STATUS_IDLE
        ):
            raise MigrationError(
                f"revision {self.current.info.up_revision_id} ended the step's transaction "
                "(COMMIT or ROLLBACK inside it): its version is not recorded; part of it "
                "may have been committed, check the schema by hand"
            )

    def after_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if context is not None and context is self._sent_by and self._sent is not None:
            self._sent_by = None
            audit.fetch_inserted(cursor, self._sent)

    def _is_version_statement(self, context: Any) -> bool:
        compiled = getattr(context, "compiled", None)
        table = getattr(getattr(compiled, "statement", None), "table", None)
        return (
            isinstance(table, sa.Table)
            and (table.name, table.schema) == self.version_table
            and isinstance(compiled.statement, UpdateBase)  # type: ignore[union-attr]
        )

    def on_version_apply(
        self,
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        """Alembic's hook: after the step's DDL and version update, in its transaction."""
        if self.rehearsal is not None:
            self.rehearsal.step_ended()
            return
        row = self._sent
        if row is None:  # no version-table statement carried it (none seen in practice)
            row = self._row(step, success=True)
            assert ctx.connection is not None
            audit.insert_row(ctx.connection, self.settings.audit_schema, row)
        self._done(row)

    def record_failure(self, engine: sa.Engine, exc: BaseException) -> audit.AuditRow | None:
        """The failed step's row, on a connection of its own, after the rollback; retried
        for a short while, so that a server restarting mid-step still gets it."""
        if self.current is None:
            return None
        error = error_text(exc, self.url)
        if self.rehearsal is not None:
            error = f"{error} (while rehearsing the downgrade: nothing was changed)"
        row = self._row(self.current.info, success=False, error=error)
        self.current = None
        deadline = time.monotonic() + FAILURE_ROW_RETRY_SECONDS
        pause = 0.25
        while True:
            try:
                with engine.begin() as conn:
                    # Never wait on a lock: a caller's open transaction may hold the table
                    # (created in it), and the engine may be the caller's, without timeouts.
                    conn.exec_driver_sql(_FAILURE_ROW_TIMEOUTS)
                    audit.ensure_table(conn, self.settings.audit_schema)
                    audit.insert_row(conn, self.settings.audit_schema, row)
                break
            except sa.exc.SQLAlchemyError as exc:
                lost = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
                if not (lost or _unreachable(exc)) or time.monotonic() >= deadline:
                    break  # the row still reaches the caller's output
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
        self._done(row)
        return row

    def _done(self, row: audit.AuditRow) -> None:
        self.rows.append(row)
        if self.on_step is not None:
            self.on_step(row)

    def _revision(self, script: Script | None) -> Revision:
        """The project's reading of a revision (file read once per command), else Alembic's."""
        assert script is not None
        known = self.project.revision(script.revision) if self.project else None
        return known or Revision.from_script(script, self.settings.schema_of(script.path))

    def _row(
        self, info: MigrationInfo, *, success: bool, error: str | None = None
    ) -> audit.AuditRow:
        script = info.up_revision  # the revision applied (upgrade) or reverted (downgrade)
        revision = self._revision(script)  # type: ignore[arg-type]
        if info.is_stamp:
            operation = audit.STAMP
            # A stamp moves between what the table held and what it names, which need not
            # be neighbours (stamp head on an empty table, stamp base).
            down = ",".join(info.down_revision_ids) or None
        else:
            operation = audit.MIGRATION if info.is_upgrade else audit.ROLLBACK
            down = ",".join(revision.down_revisions) or None
        ignored = None
        if operation == audit.MIGRATION:  # lint reads a revision's upgrade only
            from dagster_alembic import lint  # the revision's squawk_ignore, read as text

            ignored = lint.declared_ignores(revision)
        new, prev = (revision.revision, down) if info.is_upgrade else (down, revision.revision)
        return audit.AuditRow(
            operation=operation,
            alembic_version=new,
            prev_alembic_version=prev,
            operation_direction=audit.UPGRADE if info.is_upgrade else audit.DOWNGRADE,
            schema_name=revision.schema,
            environment=self.environment,
            success=success,
            user_version=self.user_version or revision.create_date,
            revision_checksum=revision.checksum,
            executed_by=self.executed_by,
            run_id=self.run_id,
            duration_ms=round((time.perf_counter() - self.started) * 1000, 3),
            error=error,
            squawk_ignore=ignored,
            message=revision.message,
            sql=list(self.statements),
        )

    def save_snapshots(self, conn: sa.Connection, *, commit: bool) -> None:
        """The reference catalog of each schema this run moved, at the revision it reached:
        the reference it had, plus exactly what the run changed. A change made by hand
        before the run is not adopted: verify keeps reporting it."""
        reached: dict[str, str | None] = {}
        for row in self.rows:
            if row.success and row.schema_name and row.operation != audit.VERIFY:
                reached[row.schema_name] = row.alembic_version
        if not reached:
            return
        try:
            for schema, revision in reached.items():
                after = catalog.snapshot(conn, schema)
                before = self.before.get(schema)
                if before is None:
                    expected = after
                else:
                    expected = catalog.carry(before.reference, before.live, after)
                catalog.save(conn, self.settings.audit_schema, schema, revision, expected)
            if commit:
                conn.commit()
        except sa.exc.SQLAlchemyError:
            if commit:
                conn.rollback()  # drift detection loses a reference point; the migration stands
