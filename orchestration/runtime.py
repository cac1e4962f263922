"""What env.py runs: the guarantees every entry point (alembic, migrate, Dagster) shares.

The pieces live beside it: sessions.py (timeouts, the lock, Ctrl-C), recorder.py (audit
rows and catalog snapshots per step); this module puts them around Alembic's run.

Callers hand per-run values to env.py through ``Config.attributes``:
  connection   a SQLAlchemy Connection to migrate on (else env.py connects itself)
  environment  dev / staging / prod / ... (else ``-x env=``, else dev)
  run_id       the Dagster run id, written to every audit row
  on_step      callable(AuditRow), called as each step ends (success or failure)
  audit_rows   a list the rows of this run are appended to
  project      the MigrationProject already read (its revisions and checksums are reused)
  settings     the ProjectSettings already read
  warnings     a list that gets what the run found worth saying (drift before migrating)
  rehearsal    a dataloss.Rehearsal: the run is a downgrade rehearsed in a transaction
               the caller rolls back (no rows, no progress; what each step removes is read)
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy.engine import URL

from dagster_alembic import audit, catalog
from dagster_alembic.errors import ConfigurationError, MigrationError
from dagster_alembic.recorder import StepRecorder
from dagster_alembic.sessions import (
    advisory_lock,
    cancel_on_interrupt,
    create_engine,
    interrupts_deferred,
)
from dagster_alembic.settings import ProjectSettings, load_settings
from dagster_alembic.targets import database_url


def environment_of(context: EnvironmentContext) -> str:
    config = context.config
    return str(
        config.attributes.get("environment")
        or context.get_x_argument(as_dictionary=True).get("env")
        or "dev"
    )


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
    options = _with_version_table(_settings(context), options)
    if context.is_offline_mode():
        run_migrations_offline(context, **options)
    else:
        run_migrations_online(context, **options)


def _with_version_table(settings: ProjectSettings, options: dict[str, Any]) -> dict[str, Any]:
    """Alembic's version table as migrate.toml's [version] names it: `migrate status` and
    verify read it without running env.py, so env.py may not name another."""
    wanted = {
        "version_table": settings.version_table,
        "version_table_schema": settings.version_table_schema,
    }
    for key, value in wanted.items():
        given = options.get(key)
        if given is not None and given != value:
            section = "table" if key == "version_table" else "schema"
            raise ConfigurationError(
                f"env.py configures {key}={given!r}, migrate.toml's [version] {section} is "
                f"{value!r}: name it in migrate.toml ([version] {section} = {given!r}), "
                "where status and verify read it too"
            )
    return {**options, **{k: v for k, v in wanted.items() if v is not None}}


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

        # Alembic calls on_version_apply only for steps that succeed; knowing the step that
        # runs is what lets a failed one be audited too.
        steps = tracked_steps(context, recorder)
        context.configure(
            connection=connection,
            transaction_per_migration=True,
            on_version_apply=on_version_apply,
            fn=steps,
            **theirs,
        )
        if in_transaction and rehearsal is None:
            refuse_autocommit_blocks(context.get_context(), recorder)
        before, after = recorder.before_cursor_execute, recorder.after_cursor_execute
        sa.event.listen(connection, "before_cursor_execute", before, retval=True)
        sa.event.listen(connection, "after_cursor_execute", after)
        try:
            with cancel_on_interrupt(connection), context.begin_transaction():
                context.run_migrations()
        except BaseException as exc:  # Ctrl-C and a terminated run are failed steps too
            with interrupts_deferred():  # a second Ctrl-C must not cost the failure row
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


def tracked_steps(context: EnvironmentContext, recorder: StepRecorder) -> Callable[..., Any]:
    """The command's step generator, wrapped to know which step runs and since when.

    Alembic's command hands it to EnvironmentContext as the ``fn`` option and
    ``configure(**kw)`` passes options on to the MigrationContext, whose public ``opts``
    show them. env.py sees EnvironmentContext only through the ``alembic.context`` proxy
    (methods only), so a throwaway configure (dialect only: no connection, no statement)
    reads ``fn`` and the real configure hands the wrapper back as ``fn=``: no private
    attribute. The steps it yields are Alembic's RevisionStep/StampStep; their ``info``
    (MigrationInfo) is what is read. tests/test_engine.py
    ``test_alembic_still_hands_env_py_the_step_generator`` fails first if this changes.
    """
    context.configure(dialect_name="postgresql")
    steps = context.get_context().opts.get("fn")
    assert callable(steps), "Alembic no longer hands env.py the command's step generator"
    return recorder.track(steps)


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
