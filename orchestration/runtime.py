"""What env.py runs: the guarantees every entry point (alembic, migrate, Dagster) shares.

Callers hand per-run values to env.py through ``Config.attributes``:
  connection   a SQLAlchemy Connection to migrate on (else env.py connects itself)
  environment  dev / staging / prod / ... (else ``-x env=``, else dev)
  run_id       the Dagster run id, written to every audit row
  on_step      callable(AuditRow), called as each step ends (success or failure)
  audit_rows   a list the rows of this run are appended to
  project      the MigrationProject already read (its revisions and checksums are reused)
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script
from sqlalchemy.engine import URL
from sqlalchemy.sql.dml import UpdateBase

from orchestration import audit, catalog
from orchestration.errors import MigrationError
from orchestration.revisions import MigrationProject, Revision
from orchestration.settings import ProjectSettings, load_settings
from orchestration.targets import database_url
from orchestration.urls import redact

# One advisory lock key for "a migration runs on this database" (63 bits, stable).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"alembic-dagster-pipeline").digest()[:8], "big") >> 1
USER_VERSION_ENV = "MIGRATE_USER_VERSION"
_ERROR_LIMIT = 4000


def application_name(environment: str) -> str:
    """What pg_stat_activity shows for our connections, so a lock holder can be named."""
    return f"migrate:{environment}:{getpass.getuser()}@{socket.gethostname()}"[:63]


def create_engine(url: URL, environment: str) -> sa.Engine:
    """An engine for one run: no pool, so session settings never outlive the run."""
    return sa.create_engine(
        url,
        poolclass=sa.NullPool,
        connect_args={"application_name": application_name(environment), "connect_timeout": 10},
    )


def environment_of(context: EnvironmentContext) -> str:
    config = context.config
    return str(
        config.attributes.get("environment")
        or context.get_x_argument(as_dictionary=True).get("env")
        or "dev"
    )


def error_text(exc: BaseException, url: URL | None = None) -> str:
    """One readable line (or a few) for an exception, with no password in it."""
    orig = getattr(exc, "orig", None)  # the driver's own message, not SQLAlchemy's wrapper
    message = str(orig if orig is not None else exc).strip()
    text = f"{type(orig or exc).__name__}: {message}"
    return redact(text, url)[:_ERROR_LIMIT]


# --- one runner per database -------------------------------------------------------------


@contextmanager
def advisory_lock(conn: sa.Connection, wait_seconds: float) -> Iterator[None]:
    """Hold the migration lock in the session of ``conn``, the migration's own connection.

    A session-level lock outlives each step's commit, and goes with the session when the
    runner dies. Waiters poll pg_try_advisory_lock, each try a transaction that ends at
    once, instead of blocking in pg_advisory_lock: a blocked statement holds a snapshot,
    and CREATE INDEX CONCURRENTLY in the holder's migration waits for every older
    snapshot in the database, so blocked waiters and the holder would wait on each other
    until lock_timeout.
    """
    deadline = time.monotonic() + wait_seconds
    pause = 0.05
    while True:
        got = conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
        if got:
            conn.commit()
            break
        if time.monotonic() >= deadline:
            holder = lock_holder(conn)
            conn.rollback()
            raise MigrationError(
                f"another migration holds the lock on this database ({holder}); "
                f"gave up after {wait_seconds:g}s"
            )
        conn.rollback()
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    try:
        yield
    finally:
        try:
            conn.rollback()  # a failed step may have left a transaction to end
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            conn.commit()
        except sa.exc.SQLAlchemyError:
            pass  # the session is gone, and its lock with it


def lock_holder(conn: sa.Connection) -> str:
    row = conn.execute(
        sa.text(
            """
            SELECT a.pid, a.application_name, a.usename, a.backend_start
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = :hi AND l.objid::bigint = :lo
            """
        ),
        {"hi": LOCK_KEY >> 32, "lo": LOCK_KEY & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "holder unknown, it may have just finished"
    since = row.backend_start.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return f"held by pid {row.pid} {row.application_name or '?'} as {row.usename}, since {since}"


# --- the audit trail ---------------------------------------------------------------------


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

    def track(self, migrations_fn: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
        """Wrap Alembic's step generator to know which step runs, and since when."""

        def tracked(heads: Any, ctx: MigrationContext) -> Iterator[Any]:
            self.version_table = (ctx.version_table, ctx.version_table_schema)
            for step in migrations_fn(heads, ctx):
                self.current, self.started = step, time.perf_counter()
                self.statements, self._sent = [], None
                yield step
            self.current = None

        return tracked

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
            self.statements.append(statement.strip())
            return statement, parameters
        if (
            self._sent is not None
            or executemany
            or not isinstance(parameters, dict)
            or "%" in statement  # would be read as a placeholder once parameters are added
            or context.compiled.effective_returning  # SQLAlchemy reads rows of its own
        ):
            return statement, parameters  # on_version_apply inserts the row itself
        self._sent = self._row(self.current.info, success=True)
        self._sent_by = context
        return audit.insert_before(statement, parameters, self.settings.audit_schema, self._sent)

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
        row = self._sent
        if row is None:  # no version-table statement carried it (none seen in practice)
            row = self._row(step, success=True)
            assert ctx.connection is not None
            audit.insert_row(ctx.connection, self.settings.audit_schema, row)
        self._done(row)

    def record_failure(self, engine: sa.Engine, exc: BaseException) -> audit.AuditRow | None:
        if self.current is None:
            return None
        row = self._row(self.current.info, success=False, error=error_text(exc, self.url))
        try:
            with engine.begin() as conn:
                audit.insert_row(conn, self.settings.audit_schema, row)
        except sa.exc.SQLAlchemyError:
            pass  # the database is gone: the row still reaches the caller and its output
        self._done(row)
        return row

    def _done(self, row: audit.AuditRow) -> None:
        self.rows.append(row)
        if self.on_step is not None:
            self.on_step(row)

    def _revision(self, script: Script) -> Revision:
        """The project's reading of a revision (file read once per command), else Alembic's."""
        known = self.project.revision(script.revision) if self.project else None
        return known or Revision.from_script(script)

    def _row(
        self, info: MigrationInfo, *, success: bool, error: str | None = None
    ) -> audit.AuditRow:
        script = info.up_revision  # the revision applied (upgrade) or reverted (downgrade)
        assert script is not None
        revision = self._revision(script)  # type: ignore[arg-type]
        if info.is_stamp:
            operation = audit.STAMP
            # A stamp moves between what the table held and what it names, which need not
            # be neighbours (stamp head on an empty table, stamp base).
            down = ",".join(info.down_revision_ids) or None
        else:
            operation = audit.MIGRATION if info.is_upgrade else audit.ROLLBACK
            down = ",".join(revision.down_revisions) or None
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
            message=revision.message,
            sql=list(self.statements),
        )


# --- env.py entry points -----------------------------------------------------------------


def _settings(context: EnvironmentContext) -> ProjectSettings:
    settings = context.config.attributes.get("settings")
    if settings is None:
        settings = load_settings(context.config.config_file_name)
        context.config.attributes["settings"] = settings
    return settings


def prepare_session(conn: sa.Connection, settings: ProjectSettings, environment: str) -> str:
    """Timeouts for every step, the audit table, and who runs this. Returns executed_by."""
    env = settings.environment(environment)
    # A runner killed mid-statement: with client_connection_check_interval (PostgreSQL 14+)
    # the server notices the lost client and rolls back, releasing its locks, instead of
    # finishing a pg_sleep or a long DDL for nobody.
    check = (conn.dialect.server_version_info or (0,)) >= (14,)
    # One round trip: the audit table's CREATE ... IF NOT EXISTS, then the settings.
    db_user = conn.exec_driver_sql(
        audit.create_sql(settings.audit_schema)
        + ";\nSELECT current_user, set_config('lock_timeout', %(lock)s, false),"
        " set_config('statement_timeout', %(statement)s, false)"
        + (", set_config('client_connection_check_interval', '1s', false)" if check else ""),
        {"lock": env.lock_timeout, "statement": env.statement_timeout},
    ).scalar()
    # Commit: Alembic must find the connection outside a transaction, or it would run
    # every revision in one external transaction instead of one transaction each.
    conn.commit()
    return f"{db_user} ({getpass.getuser()}@{socket.gethostname()})"


def run_migrations_online(context: EnvironmentContext) -> None:
    settings = _settings(context)
    environment = environment_of(context)
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run_online(context, settings, environment, connection, None)
        return
    url = database_url(settings, environment)
    engine = create_engine(url, environment)
    try:
        with engine.connect() as connection:
            _run_online(context, settings, environment, connection, url)
    finally:
        engine.dispose()


def _run_online(
    context: EnvironmentContext,
    settings: ProjectSettings,
    environment: str,
    connection: sa.Connection,
    url: URL | None,
) -> None:
    attributes = context.config.attributes
    url = url or connection.engine.url
    with advisory_lock(connection, settings.lock_wait_timeout_seconds):
        recorder = StepRecorder(
            settings,
            environment=environment,
            executed_by=prepare_session(connection, settings, environment),
            run_id=attributes.get("run_id"),
            url=url,
            on_step=attributes.get("on_step"),
            rows=attributes.setdefault("audit_rows", []),
            project=attributes.get("project"),
        )
        context.configure(
            connection=connection,
            transaction_per_migration=True,
            on_version_apply=recorder.on_version_apply,
        )
        migration_context = context.get_context()
        # Alembic calls on_version_apply only for steps that succeed; knowing the step that
        # runs is what lets a failed one be audited too.
        assert migration_context._migrations_fn is not None
        migration_context._migrations_fn = recorder.track(migration_context._migrations_fn)
        before, after = recorder.before_cursor_execute, recorder.after_cursor_execute
        sa.event.listen(connection, "before_cursor_execute", before, retval=True)
        sa.event.listen(connection, "after_cursor_execute", after)
        try:
            with context.begin_transaction():
                context.run_migrations()
        except Exception as exc:
            recorder.record_failure(connection.engine, exc)
            save_snapshots(connection, settings, recorder.rows)
            raise
        finally:
            sa.event.remove(connection, "before_cursor_execute", before)
            sa.event.remove(connection, "after_cursor_execute", after)
        save_snapshots(connection, settings, recorder.rows)


def save_snapshots(
    conn: sa.Connection, settings: ProjectSettings, rows: list[audit.AuditRow]
) -> None:
    """Record the catalog of each schema this run changed, at the revision it reached."""
    reached: dict[str, str | None] = {}
    for row in rows:
        if row.success and row.schema_name and row.operation != audit.VERIFY:
            reached[row.schema_name] = row.alembic_version
    if not reached:
        return
    try:
        for schema, revision in reached.items():
            catalog.save(conn, settings.audit_schema, schema, revision)
        conn.commit()
    except sa.exc.SQLAlchemyError:
        conn.rollback()  # drift detection loses a reference point; the migration stands


def run_migrations_offline(context: EnvironmentContext) -> None:
    """--sql mode: the SQL each step would run, for review. No connection, no audit rows."""
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
