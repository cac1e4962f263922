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
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script
from sqlalchemy.engine import URL
from sqlalchemy.sql.dml import UpdateBase

from orchestration import audit, catalog, sqltext
from orchestration.errors import MigrationError
from orchestration.revisions import MigrationProject, Revision
from orchestration.settings import EnvironmentSettings, ProjectSettings, load_settings
from orchestration.targets import database_url
from orchestration.urls import redact

# One advisory lock key for "a migration runs on this database" (63 bits, stable).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"alembic-dagster-pipeline").digest()[:8], "big") >> 1
USER_VERSION_ENV = "MIGRATE_USER_VERSION"
_ERROR_LIMIT = 4000


def application_name(environment: str) -> str:
    """What pg_stat_activity shows for our connections, so a lock holder can be named."""
    return f"migrate:{environment}:{getpass.getuser()}@{socket.gethostname()}"[:63]


def session_options(env: EnvironmentSettings) -> str:
    """libpq ``options`` that give every session the environment's timeouts from its
    first statement on: verify, pre-checks and failure rows included, not only steps."""
    settings = {"lock_timeout": env.lock_timeout, "statement_timeout": env.statement_timeout}
    return " ".join(
        f"-c {name}={value.replace(' ', chr(92) + ' ')}" for name, value in settings.items()
    )


def create_engine(
    url: URL, environment: str, env_settings: EnvironmentSettings | None = None
) -> sa.Engine:
    """An engine for one run: no pool, so session settings never outlive the run."""
    connect_args: dict[str, Any] = {
        "application_name": application_name(environment),
        "connect_timeout": 10,
    }
    if env_settings is not None:
        connect_args["options"] = session_options(env_settings)
    return sa.create_engine(url, poolclass=sa.NullPool, connect_args=connect_args)


def environment_of(context: EnvironmentContext) -> str:
    config = context.config
    return str(
        config.attributes.get("environment")
        or context.get_x_argument(as_dictionary=True).get("env")
        or "dev"
    )


def error_text(exc: BaseException, url: URL | None = None) -> str:
    """One readable line (or a few) for an exception, with no password in it."""
    if not isinstance(exc, Exception):  # KeyboardInterrupt, a terminated Dagster run
        return (
            f"interrupted ({type(exc).__name__}): the running statement was cancelled "
            "and the step rolled back"
        )
    orig = getattr(exc, "orig", None)  # the driver's own message, not SQLAlchemy's wrapper
    message = str(orig if orig is not None else exc).strip()
    text = f"{type(orig or exc).__name__}: {message}"
    return audit.printable(redact(text, url))[:_ERROR_LIMIT]


# --- one runner per database -------------------------------------------------------------


@contextmanager
def advisory_lock(conn: sa.Connection, wait_seconds: float, *, in_transaction: bool = False):
    """Hold the migration lock in the session of ``conn``, the migration's own connection.

    A session-level lock outlives each step's commit, and goes with the session when the
    runner dies. Waiters poll pg_try_advisory_lock, each try a transaction that ends at
    once, instead of blocking in pg_advisory_lock: a blocked statement holds a snapshot,
    and CREATE INDEX CONCURRENTLY in the holder's migration waits for every older
    snapshot in the database, so blocked waiters and the holder would wait on each other
    until lock_timeout.

    ``in_transaction``: the caller's transaction (or a rehearsal) holds the run. The lock
    is then transaction-level: it ends with that transaction, never outlives it on a
    pooled connection, and no try commits or rolls back the caller's work. Locks are
    re-entrant within a session, so a command that holds the lock can run Alembic, whose
    env.py takes it again.
    """
    function = "pg_try_advisory_xact_lock" if in_transaction else "pg_try_advisory_lock"
    deadline = time.monotonic() + wait_seconds
    pause = 0.05
    while True:
        got = conn.scalar(sa.text(f"SELECT {function}(:k)"), {"k": LOCK_KEY})
        if got:
            if not in_transaction:
                conn.commit()
            break
        if time.monotonic() >= deadline:
            holder = lock_holder(conn)
            if not in_transaction:
                conn.rollback()
            raise MigrationError(
                f"another migration holds the lock on this database ({holder}); "
                f"gave up after {wait_seconds:g}s"
            )
        if not in_transaction:
            conn.rollback()
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    try:
        yield
    finally:
        if not in_transaction:
            release_lock(conn)


def release_lock(conn: sa.Connection) -> None:
    """Release one hold of the session-level lock (a failed step may have left a
    transaction to end first); a session that is gone took its lock with it."""
    try:
        conn.rollback()
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        conn.commit()
    except sa.exc.SQLAlchemyError:
        pass


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


# --- interrupts: Ctrl-C and a terminated run cancel the running statement ---------------


@contextmanager
def cancel_on_interrupt(connection: sa.Connection) -> Iterator[None]:
    """Cancel the running statement on the server as soon as SIGINT or SIGTERM arrives.

    psycopg2 blocks in C until a statement returns, and Python runs signal handlers only
    between bytecodes: Ctrl-C (or Dagster's SIGINT to a run it terminates) would wait for
    a pg_sleep or a long DDL to finish. Python's C-level handler writes each signal to the
    wakeup fd even then; a thread reading it cancels the statement (psycopg2's cancel()
    is meant to be called from another thread), the server rolls it back, and the
    interrupt is raised once control is back in Python. (A psycopg2 wait callback would
    do the same but turns COPY off for revisions.) Outside the main thread Python takes
    no wakeup fd: there, no early cancel.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    stop = threading.Event()

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if stop.is_set():
                return
            if signal.SIGINT in data or signal.SIGTERM in data:
                dbapi = connection.connection.dbapi_connection
                with suppress(Exception):  # no statement, or the connection is gone
                    dbapi.cancel()  # type: ignore[union-attr]
            if previous >= 0:  # whoever had the wakeup fd (an event loop) still hears it
                with suppress(OSError):
                    os.write(previous, data)

    watcher = threading.Thread(target=watch, name="migrate-cancel-on-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        stop.set()
        os.write(write_fd, b"\0")
        watcher.join()
        os.close(read_fd)
        os.close(write_fd)


# --- the audit trail ---------------------------------------------------------------------

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
            raise MigrationError(
                f"revision {revision} runs {found.split()[0].upper()!r}, which would end "
                "the step's transaction: refused before it ran. Put statements that must "
                "run outside a transaction in `with op.get_context().autocommit_block():`"
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


# --- env.py entry points -----------------------------------------------------------------


def _settings(context: EnvironmentContext) -> ProjectSettings:
    settings = context.config.attributes.get("settings")
    if settings is None:
        settings = load_settings(context.config.config_file_name)
        context.config.attributes["settings"] = settings
    return settings


def prepare_session(
    conn: sa.Connection, settings: ProjectSettings, environment: str, *, in_transaction: bool
) -> str:
    """Timeouts for every step, the audit table, and who runs this. Returns executed_by.

    In a caller's transaction the settings are local to it and nothing is committed.
    """
    env = settings.environment(environment)
    # A runner killed mid-statement: with client_connection_check_interval (PostgreSQL 14+)
    # the server notices the lost client and rolls back, releasing its locks, instead of
    # finishing a pg_sleep or a long DDL for nobody.
    check = (conn.dialect.server_version_info or (0,)) >= (14,)
    local = "true" if in_transaction else "false"
    # One round trip: the settings and the audit table's layout (created, upgraded or
    # taken over afterwards only when needed).
    _, (db_user, *_) = audit.ensure_table_with(
        conn,
        settings.audit_schema,
        f"SELECT current_user, set_config('lock_timeout', %(lock)s, {local}),"
        f" set_config('statement_timeout', %(statement)s, {local})"
        + (f", set_config('client_connection_check_interval', '1s', {local})" if check else ""),
        {"lock": env.lock_timeout, "statement": env.statement_timeout},
    )
    if not in_transaction:
        # Alembic must find the connection outside a transaction, or it would run every
        # revision in one external transaction instead of one transaction each.
        conn.commit()
    return f"{db_user} ({getpass.getuser()}@{socket.gethostname()})"


def run_migrations(context: EnvironmentContext, **options: Any) -> None:
    """All an env.py needs: ``runtime.run_migrations(context, target_metadata=...)``.

    ``options`` are the team's own ``context.configure()`` options (target_metadata,
    include_object, version_table, compare_type, render_as_batch, ...): they reach Alembic
    as they are, so autogenerate and ``alembic check`` keep working; the pipeline adds one
    transaction per revision, the lock, timeouts and the audit trail.
    """
    if context.is_offline_mode():
        run_migrations_offline(context, **options)
    else:
        run_migrations_online(context, **options)


def run_migrations_online(context: EnvironmentContext, **options: Any) -> None:
    """Online mode on ``Config.attributes["connection"]`` (a Connection, or an Engine as
    pytest-alembic gives it), else on the environment's database."""
    settings = _settings(context)
    environment = environment_of(context)
    given = context.config.attributes.get("connection")
    if isinstance(given, sa.Engine):
        with given.connect() as connection:
            _run_online(context, settings, environment, connection, None, options, owned=False)
        return
    if given is not None:
        _run_online(context, settings, environment, given, None, options, owned=False)
        return
    url = database_url(settings, environment)
    engine = create_engine(url, environment, settings.environment(environment))
    try:
        with engine.connect() as connection:
            _run_online(context, settings, environment, connection, url, options, owned=True)
    finally:
        engine.dispose()


_PIPELINE_OPTIONS = ("connection", "transaction_per_migration", "on_version_apply")


def _without_our_tables(settings: ProjectSettings, options: dict[str, Any]) -> dict[str, Any]:
    """The team's options, with autogenerate (``revision --autogenerate``, ``check``)
    blind to the pipeline's own tables: they live in the audit schema (often ``public``,
    the team's own), and must never appear as tables to drop."""
    theirs = options.get("include_name")
    ours = {audit.TABLE_NAME, catalog.SNAPSHOT_TABLE}

    def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        schema = parent_names.get("schema_name")
        if type_ == "table" and name in ours and schema in (None, settings.audit_schema):
            return False
        return bool(theirs(name, type_, parent_names)) if theirs is not None else True

    return {**options, "include_name": include_name}


def _moves(context: EnvironmentContext) -> bool:
    """Whether the command moves the version table (upgrade, downgrade, stamp: they pass a
    destination, which is None for base); current, check, revision --autogenerate pass
    none at all."""
    try:
        context.get_revision_argument()
    except KeyError:
        return False
    return True


def _run_online(
    context: EnvironmentContext,
    settings: ProjectSettings,
    environment: str,
    connection: sa.Connection,
    url: URL | None,
    options: dict[str, Any],
    *,
    owned: bool,
) -> None:
    attributes = context.config.attributes
    url = url or connection.engine.url
    theirs = _without_our_tables(
        settings, {k: v for k, v in options.items() if k not in _PIPELINE_OPTIONS}
    )
    if not _moves(context):
        # current, check, revision --autogenerate, history -i: no revision will run, so
        # nothing is written (not even Alembic's empty version table) and no lock is taken.
        context.configure(connection=connection, **{"dont_mutate": True, **theirs})
        with context.begin_transaction():
            context.run_migrations()
        return
    # A caller's transaction (Alembic's connection-sharing recipe) or a rehearsal: run
    # inside it, as Alembic does, and leave its commit or rollback to the caller.
    in_transaction = connection.in_transaction()
    rehearsal = attributes.get("rehearsal")
    lock = advisory_lock(
        connection, settings.lock_wait_timeout_seconds, in_transaction=in_transaction
    )
    with lock, _session_settings_reset(connection, reset=not owned and not in_transaction):
        recorder = StepRecorder(
            settings,
            environment=environment,
            executed_by=prepare_session(
                connection, settings, environment, in_transaction=in_transaction
            ),
            run_id=attributes.get("run_id"),
            url=url,
            on_step=attributes.get("on_step"),
            rows=attributes.setdefault("audit_rows", []),
            project=attributes.get("project"),
            rehearsal=rehearsal,
            warnings=attributes.setdefault("warnings", []),
        )
        callbacks = options.get("on_version_apply") or ()
        callbacks = callbacks if isinstance(callbacks, list | tuple) else (callbacks,)

        def on_version_apply(
            ctx: MigrationContext,
            step: MigrationInfo,
            heads: Collection[Any],
            run_args: Mapping[str, Any],
        ) -> None:  # ours first (the step's row), then the team's own
            recorder.on_version_apply(ctx, step, heads, run_args)
            for callback in callbacks:
                callback(ctx=ctx, step=step, heads=heads, run_args=run_args)

        context.configure(
            connection=connection,
            transaction_per_migration=True,
            on_version_apply=on_version_apply,
            **theirs,
        )
        # Alembic calls on_version_apply only for steps that succeed; knowing the step that
        # runs is what lets a failed one be audited too.
        track_steps(context.get_context(), recorder)
        if in_transaction and rehearsal is None:
            refuse_autocommit_blocks(context.get_context(), recorder)
        before, after = recorder.before_cursor_execute, recorder.after_cursor_execute
        sa.event.listen(connection, "before_cursor_execute", before, retval=True)
        sa.event.listen(connection, "after_cursor_execute", after)
        try:
            with cancel_on_interrupt(connection), context.begin_transaction():
                context.run_migrations()
        except BaseException as exc:  # Ctrl-C and a terminated run are failed steps too
            recorder.record_failure(connection.engine, exc)
            if rehearsal is None:
                recorder.save_snapshots(connection, commit=not in_transaction)
            raise
        finally:
            sa.event.remove(connection, "before_cursor_execute", before)
            sa.event.remove(connection, "after_cursor_execute", after)
        if rehearsal is None:
            recorder.save_snapshots(connection, commit=not in_transaction)


@contextmanager
def _session_settings_reset(conn: sa.Connection, *, reset: bool) -> Iterator[None]:
    """A caller's pooled connection goes back without our timeouts in its session."""
    try:
        yield
    finally:
        if reset:
            with suppress(sa.exc.SQLAlchemyError):
                conn.rollback()
                conn.exec_driver_sql(
                    "RESET lock_timeout; RESET statement_timeout; "
                    "RESET client_connection_check_interval"
                )
                conn.commit()


def refuse_autocommit_blocks(migration_context: MigrationContext, recorder: StepRecorder) -> None:
    """Inside a caller's transaction, an autocommit block (CREATE INDEX CONCURRENTLY) would
    have to commit the caller's work; Alembic then fails on a bare assert. Say why."""

    @contextmanager
    def refused() -> Iterator[None]:
        revision = recorder.current.info.up_revision_id if recorder.current else "?"
        raise MigrationError(
            f"revision {revision} runs statements outside a transaction (autocommit_block), "
            "which cannot happen inside the transaction the caller opened: run it on a "
            "connection with no transaction open (or an Engine)"
        )
        yield  # pragma: no cover

    migration_context.autocommit_block = refused  # type: ignore[method-assign]


def track_steps(migration_context: MigrationContext, recorder: StepRecorder) -> None:
    """Wrap the step generator Alembic's command gave the MigrationContext.

    The one private attribute this project uses: env.py cannot reach the command's ``fn``
    otherwise (the ``alembic.context`` proxy exposes methods only). tests/test_engine.py
    ``test_alembic_still_carries_the_step_generator`` fails first if Alembic renames it.
    """
    steps = migration_context._migrations_fn
    assert steps is not None, "Alembic no longer keeps the command's step generator"
    migration_context._migrations_fn = recorder.track(steps)


def run_migrations_offline(context: EnvironmentContext, **options: Any) -> None:
    """--sql mode: the SQL each step would run, for review. No connection, no audit rows."""
    theirs = {k: v for k, v in options.items() if k not in (*_PIPELINE_OPTIONS, "url")}
    context.configure(
        **{"literal_binds": True, **theirs},
        dialect_name="postgresql",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
