"""The migration engine: status, plan, upgrade, downgrade, verify and audit of one environment.

Never imports dagster. Every function takes the loaded project and an environment name,
connects, does its work through Alembic's API (which runs migrations/env.py, where the lock,
timeouts and audit trail live), and returns values: dataclasses, not log lines.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dagster_alembic import audit, catalog, verification
from dagster_alembic.errors import ConfigurationError, DataLossRefused, MigrationError
from dagster_alembic.revisions import MigrationProject, Revision, SchemaStatus
from dagster_alembic.sessions import advisory_lock, create_engine, error_text
from dagster_alembic.settings import ProjectSettings, check_identifier
from dagster_alembic.targets import database_url
from dagster_alembic.urls import display_url, redact

if TYPE_CHECKING:
    # Alembic is imported where a migration runs or renders: verify, status and baseline
    # run none, and importing it is most of their time (issue #15).
    from alembic.config import Config

    from dagster_alembic import dataloss  # imported where used: only downgrade needs it

StepCallback = Callable[[audit.AuditRow], None]
_RELATIVE = re.compile(r"^-(\d+)$")


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedSchema:
    schema: str
    steps: tuple[Revision, ...]
    sql: str

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "steps": [{"revision": r.revision, "message": r.message} for r in self.steps],
            "sql": self.sql,
        }


@dataclass
class RunResult:
    """What an upgrade or downgrade did: its audit rows, and the error that stopped it."""

    environment: str
    operation: str
    steps: list[audit.AuditRow] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. drift found before migrating

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def failure_line(self) -> str:
        """A failed run's first line for people: the revision and the cause."""
        failed = next((r for r in self.steps if not r.success), None)
        if failed is None:
            return f"{self.environment}: {self.operation} failed: {self.error}"
        cause = (failed.error or self.error or "").splitlines()
        return (
            f"{self.environment}/{failed.schema_name}: revision "
            f"{failed.alembic_version or 'base'} ({failed.message}) failed: "
            f"{cause[0] if cause else 'no cause recorded'}"
        )

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "operation": self.operation,
            "ok": self.ok,
            "error": self.error,
            "warnings": self.warnings,
            "steps": [row.to_dict() for row in self.steps],
        }


# Verify's results (verification.py): one implementation for the full and the fast path.
VerifyFinding = verification.VerifyFinding
VerifyResult = verification.VerifyResult


# --- connecting --------------------------------------------------------------------------

# Called with (environment, url) after each successful connect (the CLI names its target).
on_connect: ContextVar[Callable[[str, URL], None] | None] = ContextVar("on_connect", default=None)


@contextmanager
def connect(
    project: MigrationProject, environment: str, database: str | None = None
) -> Iterator[tuple[sa.Connection, URL]]:
    """A connection to the environment's database (or another database on its server, for
    a fleet target), or one clear ConfigurationError."""
    with connect_settings(project.settings, environment, database) as connected:
        yield connected


@contextmanager
def connect_settings(
    settings: ProjectSettings, environment: str, database: str | None = None
) -> Iterator[tuple[sa.Connection, URL]]:
    """``connect`` for what needs no revision file (the audit table): works while a
    revision file is broken."""
    url = database_url(settings, environment)
    if database is not None:
        url = url.set(database=check_identifier("database", database))
    # Every session has the environment's lock_timeout and statement_timeout.
    engine = create_engine(url, environment, settings.environment(environment))
    try:
        try:
            conn = engine.connect()
        except sa.exc.OperationalError as exc:
            reason = redact(str(exc.orig).strip().splitlines()[0], url)
            raise ConfigurationError(
                f"cannot connect to the {environment} database {display_url(url)}: {reason}"
            ) from None
        if (announce := on_connect.get()) is not None:
            announce(environment, url)
        with conn:
            try:
                yield conn, url
            except (sa.exc.DBAPIError, psycopg2.Error) as exc:  # a timeout, a lost server:
                # the work failed (psycopg2's own errors: statements on the driver's cursor)
                raise MigrationError(f"{environment}: {error_text(exc, url)}") from None
    finally:
        engine.dispose()


def _alembic_config(
    project: MigrationProject,
    environment: str,
    connection: sa.Connection | None,
    *,
    run_id: str | None = None,
    on_step: StepCallback | None = None,
    output: io.StringIO | None = None,
    rehearsal: dataloss.Rehearsal | None = None,
) -> Config:
    from alembic.config import Config

    config = Config(str(project.settings.alembic_ini), output_buffer=output)
    config.attributes.update(
        settings=project.settings,
        project=project,
        environment=environment,
        connection=connection,
        run_id=run_id,
        on_step=on_step,
        audit_rows=[],
        warnings=[],
        configure_logger=False,
        rehearsal=rehearsal,
    )
    return config


def offline_config(project: MigrationProject, environment: str, output: io.StringIO) -> Config:
    """A Config that renders SQL offline (``command.upgrade(config, ..., sql=True)``) into
    ``output``: no connection, no lock, no audit row (plan and lint)."""
    return _alembic_config(project, environment, None, output=output)


def select_schemas(project: MigrationProject, schemas: list[str] | None) -> list[str]:
    """The schemas named (each checked: an unknown one is a ConfigurationError), in
    dependency order; every schema when none is named."""
    return _schemas(project, schemas)


def _db_heads(conn: sa.Connection, settings: ProjectSettings) -> tuple[str, ...]:
    """The heads in the version table (migrate.toml [version]; alembic_version by default,
    found through search_path), read as MigrationContext.get_current_heads() reads them
    (none when it does not exist), without importing Alembic (tests/test_engine.py
    compares the two)."""
    table = settings.version_table_sql
    exists = conn.scalar(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table})
    query = sa.text(f"SELECT version_num FROM {table}")
    heads = tuple(conn.scalars(query)) if exists else ()
    conn.commit()  # leave no transaction open: Alembic must begin its own per step
    return heads


def _schemas(project: MigrationProject, schemas: list[str] | None) -> list[str]:
    return project.select_schemas(schemas)


# --- status and plan ---------------------------------------------------------------------


def status(
    project: MigrationProject,
    environment: str,
    schemas: list[str] | None = None,
    *,
    database: str | None = None,
    warnings: list[str] | None = None,
) -> list[SchemaStatus]:
    """Current revision, head and pending revisions of each schema. ``warnings`` gets a
    line for a revision the database holds that no file defines."""
    selected = _schemas(project, schemas)
    with connect(project, environment, database) as (conn, _):
        heads = _db_heads(conn, project.settings)
        states = project.statuses(heads, selected)
        if warnings is not None:
            warnings.extend(project.state_warnings(heads, environment, selected))
        return states


def plan(
    project: MigrationProject, environment: str, schemas: list[str] | None = None
) -> list[PlannedSchema]:
    """The SQL that `upgrade` would run, rendered offline (--sql mode): changes nothing."""
    result = []
    ahead: list[str] = []
    statuses = status(project, environment, schemas, warnings=ahead)
    if ahead:
        raise ConfigurationError(ahead[0])
    for st in statuses:
        if not st.pending:
            result.append(PlannedSchema(st.schema, (), ""))
            continue
        first = st.pending[0]
        # At base, start from what the first step depends on, so that other schemas'
        # revisions (planned separately, in order) are not rendered twice.
        start = st.current or (first.depends_on[-1] if first.depends_on else "base")
        output = io.StringIO()
        config = offline_config(project, environment, output)
        from alembic import command

        try:
            command.upgrade(config, f"{start}:{st.head}", sql=True)
        except Exception as exc:  # a revision that cannot run offline (reads data, raises)
            url = database_url(project.settings, environment)
            raise MigrationError(
                f"cannot render the SQL of {st.schema} offline: {error_text(exc, url)}"
            ) from None
        result.append(PlannedSchema(st.schema, st.pending, output.getvalue()))
    return result


# --- upgrade and downgrade ---------------------------------------------------------------


def _upgrade_targets(
    project: MigrationProject, schemas: list[str] | None, to: str | None
) -> list[str]:
    if to is None or to == "head":
        if not schemas:
            return ["heads"]
        # Revision ids, not "<schema>@head": a history needs no branch label to be upgraded.
        heads = (project.head(s) for s in _schemas(project, schemas))
        return [head for head in heads if head is not None]
    revision = project.resolve(to)
    if schemas and revision.schema not in schemas:
        raise ConfigurationError(
            f"revision {to} belongs to schema {revision.schema!r}, not {', '.join(schemas)}"
        )
    return [revision.revision]


def _run_on(
    conn: sa.Connection,
    url: URL,
    project: MigrationProject,
    environment: str,
    operation: str,
    steps: Callable[[Config], None],
    run_id: str | None,
    on_step: StepCallback | None,
) -> RunResult:
    """Run Alembic commands on ``conn``; a step that fails is the result's error."""
    config = _alembic_config(project, environment, conn, run_id=run_id, on_step=on_step)
    result = RunResult(
        environment,
        operation,
        steps=config.attributes["audit_rows"],
        warnings=config.attributes["warnings"],
    )
    try:
        steps(config)
    except Exception as exc:
        if not _migration_failure(project, result, exc):
            raise  # our own bug, or bad input: the caller shows its traceback or its line
        result.error = error_text(exc, url)
        culprit = _revision_in_traceback(project, exc)
        if culprit is not None and all(row.success for row in result.steps):
            # failed before its step began (its module did not import): name it first
            result.error = f"revision {culprit.revision} ({culprit.path.name}): {result.error}"
    return result


def _revision_in_traceback(project: MigrationProject, exc: BaseException) -> Revision | None:
    """The revision file the error passed through last, if any."""
    by_path = {str(r.path): r for s in project.schemas for r in project.revisions(s)}
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        found = by_path.get(frame.f_code.co_filename, found)
    return found


def _migration_failure(project: MigrationProject, result: RunResult, exc: Exception) -> bool:
    """Whether ``exc`` is the migration's failure rather than a bug of ours: the database
    or a guard said no, a step failed (env.py wrote its row), Alembic refused the command,
    or the error passed through a revision file's own code (a module that fails to import)."""
    from alembic.util import CommandError

    if isinstance(exc, MigrationError | sa.exc.SQLAlchemyError | CommandError):
        return True
    if any(not row.success for row in result.steps):
        return True
    return _revision_in_traceback(project, exc) is not None


def upgrade(
    project: MigrationProject,
    environment: str,
    *,
    schemas: list[str] | None = None,
    to: str | None = None,
    run_id: str | None = None,
    on_step: StepCallback | None = None,
    database: str | None = None,
    check_lint: bool = True,
) -> RunResult:
    """Upgrade the schemas (default all) to head, or everything needed to reach ``to``.

    ``database`` migrates another database on the environment's server (a fleet target).
    Before any SQL runs, the revisions it would apply are linted under the environment's
    rules (lint.LintRefused when one has a finding they make an error); ``check_lint=False``
    for a caller that linted them already (promotion.upgrade).
    """
    targets = _upgrade_targets(project, schemas, to)

    def steps(config: Config) -> None:
        from alembic import command

        from dagster_alembic import lazyscript

        # Only the revisions that run are imported, where the scan can tell Alembic the
        # rest (lazyscript.py); else Alembic's own command, which imports every one.
        script = lazyscript.script_directory(config, project)
        for target in targets:
            if script is None:
                command.upgrade(config, target)
            else:
                lazyscript.upgrade(config, target, script)

    with connect(project, environment, database) as (conn, url):
        if check_lint:
            _lint_gate(project, environment, conn, targets)
        return _run_on(conn, url, project, environment, "upgrade", steps, run_id, on_step)


def _lint_gate(
    project: MigrationProject, environment: str, conn: sa.Connection, targets: list[str]
) -> None:
    from dagster_alembic import lint  # lint renders SQL through this module

    if lint.may_refuse(project, environment):  # else: no read, no squawk run
        heads = _db_heads(conn, project.settings)
        project.check_known(heads, environment)
        lint.gate(project, environment, project.applied(heads), targets)


def lint_gate(
    project: MigrationProject,
    environment: str,
    targets: list[str],
    *,
    database: str | None = None,
) -> None:
    """Refuse (lint.LintRefused) an upgrade to ``targets`` (revision ids) whose revisions
    have a finding that the environment's rules make an error, before any SQL runs."""
    from dagster_alembic import lint

    if targets and lint.may_refuse(project, environment):
        with connect(project, environment, database) as (conn, _):
            _lint_gate(project, environment, conn, targets)


def _kept(project: MigrationProject, st: SchemaStatus, to: str) -> int:
    """How many of the schema's applied revisions stay after a downgrade to ``to``
    (a revision, ``-N`` or ``base``); a ``to`` that cannot apply is a ConfigurationError."""
    applied = [r for r in project.revisions(st.schema) if r not in st.pending]
    tips = project.tips(st.schema, {r.revision for r in applied})
    if len(tips) > 1 and to != "base":
        # A merge taken back leaves two revisions standing: "one step back", or one of
        # them, has no single meaning; a revision below all of them has.
        below_all = set.intersection(*(project.lineage(tip) for tip in tips))
        if _RELATIVE.match(to) or project.resolve(to).revision not in below_all - set(tips):
            raise ConfigurationError(
                f"{st.schema} stands at {len(tips)} revisions ({', '.join(tips)}), a merge "
                "taken back: downgrade --to a revision below all of them (or base), or "
                "upgrade to apply the merge again"
            )
    relative = _RELATIVE.match(to)
    if relative:
        count = int(relative.group(1))
        if count == 0 or count > len(applied):
            raise ConfigurationError(
                f"cannot downgrade {st.schema} by {count}: {len(applied)} revision(s) applied"
            )
        return len(applied) - count
    if to == "base":
        return 0
    revision = project.resolve(to)
    if revision.schema != st.schema:
        raise ConfigurationError(f"revision {to} belongs to schema {revision.schema!r}")
    if revision not in applied:
        raise ConfigurationError(
            f"revision {revision.revision} of {st.schema} is not applied "
            f"(current: {st.current or 'base'}): nothing to downgrade to"
        )
    return applied.index(revision) + 1


def _downgrade_target(project: MigrationProject, st: SchemaStatus, to: str) -> str | None:
    """Alembic's name for the downgrade target of one schema: the revision that stays,
    or ``<first revision>@base``; None when nothing is to be reverted. Revision ids, so no
    branch label is needed."""
    kept = _kept(project, st, to)
    applied = [r for r in project.revisions(st.schema) if r not in st.pending]
    if kept == len(applied):
        return None  # already there: nothing to do, which is success
    if kept == 0:
        return f"{applied[0].revision}@base"
    return applied[kept - 1].revision


def _rehearse(
    project: MigrationProject,
    environment: str,
    conn: sa.Connection,
    url: URL,
    targets: list[str],
    run_id: str | None,
    on_step: StepCallback | None,
) -> list[dataloss.AtRisk] | RunResult:
    """Run the downgrade in a transaction, watch what each step removes, roll it back.

    Returns the rows at risk, or, when a step fails in the rehearsal, the failed result
    (env.py wrote that step's failure row; nothing else was changed).
    """
    from dagster_alembic import dataloss

    rehearsal = dataloss.Rehearsal()
    config = _alembic_config(
        project, environment, conn, run_id=run_id, on_step=on_step, rehearsal=rehearsal
    )
    rows = config.attributes["audit_rows"]
    from alembic import command

    conn.begin()
    try:
        for target in targets:
            command.downgrade(config, target)
    except Exception as exc:
        conn.rollback()
        failed = RunResult(environment, "downgrade", steps=rows)
        if not _migration_failure(project, failed, exc):
            raise
        failed.error = error_text(exc, url) + " (while rehearsing the downgrade: nothing changed)"
        return failed
    conn.rollback()
    return rehearsal.at_risk(conn)


def downgrade(
    project: MigrationProject,
    environment: str,
    *,
    schemas: list[str],
    to: str,
    allow_data_loss: bool = False,
    run_id: str | None = None,
    on_step: StepCallback | None = None,
) -> RunResult:
    """Downgrade each schema to ``to``: a revision, ``-N`` or ``base``.

    Alembic downgrades dependents first: revisions of other schemas that depend on a
    reverted revision are reverted too (each gets its own rollback audit row). Unless
    ``allow_data_loss``, the downgrade is first rehearsed in a transaction that is rolled
    back (dataloss.py), and refused when it would destroy rows. Planning, the rehearsal
    and the downgrade itself run under one hold of the migration lock, on one session:
    nothing can land between what was checked and what runs.
    """
    if not schemas and len(project.schemas) == 1:
        schemas = list(project.schemas)  # one history: no doubt which one is meant
    if not schemas:
        raise ConfigurationError("downgrade needs --schema: which schema to take back")
    if to != "base" and len(schemas) > 1:
        raise ConfigurationError("downgrade to a revision or by -N takes exactly one --schema")
    selected = _schemas(project, schemas)
    with (
        connect(project, environment) as (conn, url),
        advisory_lock(conn, project.settings.lock_wait_timeout_seconds),
    ):
        heads = _db_heads(conn, project.settings)
        project.check_known(heads, environment)
        statuses = project.statuses(heads, list(project.schemas))
        wanted = (_downgrade_target(project, st, to) for st in statuses if st.schema in selected)
        targets = [target for target in wanted if target is not None]
        if not allow_data_loss:
            rehearsed = _rehearse(project, environment, conn, url, targets, run_id, on_step)
            if isinstance(rehearsed, RunResult):
                return rehearsed
            if rehearsed:
                raise DataLossRefused(
                    "downgrade refused, it would destroy data: "
                    + "; ".join(str(r) for r in rehearsed)
                    + " (--allow-data-loss to go ahead)"
                )

        def steps(config: Config) -> None:
            from alembic import command

            for target in targets:
                command.downgrade(config, target)

        return _run_on(conn, url, project, environment, "downgrade", steps, run_id, on_step)


# --- verify ------------------------------------------------------------------------------


def _revision_hooks(
    project: MigrationProject, conn: sa.Connection, st: SchemaStatus
) -> list[VerifyFinding]:
    """Run each applied revision's optional ``verify(connection)`` function."""
    findings = []
    for revision in project.revisions(st.schema):
        if revision in st.pending or not revision.defines_verify:
            continue  # only files that define verify() are imported
        hook = getattr(project.module(revision), "verify", None)
        if hook is None:
            continue
        if inspect.iscoroutinefunction(hook) or not callable(hook):
            outcome = "must be a plain function taking the connection, not " + (
                "async" if callable(hook) else type(hook).__name__
            )
        else:
            try:
                outcome = hook(conn)
            except Exception as exc:
                outcome = error_text(exc)
            finally:
                conn.rollback()
        if outcome not in (None, True):
            findings.append(
                VerifyFinding(
                    "revision_hook",
                    f"{revision.revision} verify(): {outcome or 'returned False'}",
                    revision=revision.revision,
                )
            )
    return findings


def verify(
    project: MigrationProject,
    environment: str,
    schemas: list[str] | None = None,
    *,
    expect_head: bool | Callable[[str], bool] = True,
    adjust: Callable[[VerifyResult], None] | None = None,
    report: Callable[[list[VerifyResult]], None] | None = None,
    run_id: str | None = None,
    database: str | None = None,
) -> list[VerifyResult]:
    """Check each schema and write one `verify` audit row per schema, all in one
    transaction once every schema is checked: an interrupted verify records nothing.

    ``expect_head``: False checks a schema where it stands (after a rollback): everything
    but being at head; a function says it per schema. ``adjust`` may change a result's
    findings before its row is written (promotion's expectation). ``report`` is shown the
    results, rows written, before they are committed: what it prints is never less than
    what was recorded (an interrupt after it records nothing, and says so).
    """
    selected = _schemas(project, schemas)
    expects = expect_head if callable(expect_head) else (lambda schema: bool(expect_head))
    results = []
    with connect(project, environment, database) as (conn, _):
        audit.ensure_table(conn, project.settings.audit_schema)
        executed_by = conn.scalar(sa.text("SELECT current_user"))
        conn.commit()
        db_heads = _db_heads(conn, project.settings)
        layout = audit.layout_of(conn, project.settings.audit_schema)
        for st in project.statuses(db_heads, selected):
            started = time.perf_counter()
            found = verification.findings(
                conn, project, st, db_heads, expect_head=expects(st.schema), layout=layout
            )
            conn.rollback()  # the reads' transaction: each hook begins its own
            found += _revision_hooks(project, conn, st)
            result = verification.result(environment, st, found, started)
            if adjust is not None:
                adjust(result)
            results.append(result)
        for result in results:  # as the fast path writes them
            row = verification.audit_row(result, executed_by, run_id)
            result.audit_id = audit.insert_row(conn, layout, row).id
        if report is not None:
            report(results)
        conn.commit()
    return results


# --- baseline: a reference accepted by hand -------------------------------------------------


@dataclass
class BaselineResult:
    """What `baseline` accepted for one schema: the drift it adopted, the checksums it
    recorded, and the audit rows that say so."""

    environment: str
    schema: str
    current: str | None
    accepted_drift: list[str]
    recorded_checksums: list[str]
    audit_ids: list[int]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def baseline(
    project: MigrationProject,
    environment: str,
    schemas: list[str] | None = None,
    *,
    run_id: str | None = None,
) -> list[BaselineResult]:
    """Accept each schema as it is now: its live catalog becomes the reference verify
    compares with, and each applied revision's file checksum is recorded where none was
    (a database plain Alembic migrated) or where it differs. Every acceptance is an audit
    row (operation ``baseline``): drift is only ever adopted by this explicit act.
    """
    selected = _schemas(project, schemas)
    audit_schema = project.settings.audit_schema
    results = []
    with (
        connect(project, environment) as (conn, _),
        advisory_lock(conn, project.settings.lock_wait_timeout_seconds),
    ):
        audit.ensure_table(conn, audit_schema)
        executed_by = conn.scalar(sa.text("SELECT current_user"))
        conn.commit()
        heads = _db_heads(conn, project.settings)
        project.check_known(heads, environment)
        for st in project.statuses(heads, selected):
            recorded = audit.applied_checksums(conn, audit_schema, st.schema)
            expected = catalog.load(conn, audit_schema, st.schema, st.current)
            live = catalog.snapshot(conn, st.schema)
            drift = catalog.diff(expected, live) if expected is not None else []
            applied = [r for r in project.revisions(st.schema) if r not in st.pending]
            anew = [r for r in applied if recorded.get(r.revision) != r.checksum]
            if st.current is not None and all(r.revision != st.current for r in anew):
                anew.append(next(r for r in applied if r.revision == st.current))
            rows = [
                verification.standing_row(
                    audit.BASELINE,
                    st.schema,
                    r.revision,
                    environment,
                    executed_by,
                    run_id,
                    user_version=r.create_date,
                    revision_checksum=r.checksum,
                )
                for r in anew
            ] or [
                verification.standing_row(
                    audit.BASELINE, st.schema, None, environment, executed_by, run_id
                )
            ]
            ids = [audit.insert_row(conn, audit_schema, row).id for row in rows]
            catalog.save(conn, audit_schema, st.schema, st.current, live)
            conn.commit()
            results.append(
                BaselineResult(
                    environment,
                    st.schema,
                    st.current,
                    drift,
                    [r.revision for r in anew if recorded.get(r.revision) != r.checksum],
                    [i for i in ids if i is not None],
                )
            )
    return results


# --- audit history -----------------------------------------------------------------------


def history(
    settings: ProjectSettings,
    environment: str,
    *,
    schemas: list[str] | None = None,
    limit: int = 20,
) -> list[audit.AuditRow]:
    """The newest audit rows of the environment's database. Reads no revision file: the
    history stays readable while one is broken (or a schema has two heads)."""
    known = list(dict.fromkeys(h.schema for h in settings.histories))
    for schema in schemas or ():
        if schema not in known:
            raise ConfigurationError(
                f"unknown schema {schema!r} (known: {', '.join(known) or 'none'})"
            )
    with connect_settings(settings, environment) as (conn, _):
        return audit.recent_rows(conn, settings.audit_schema, limit=limit, schema_names=schemas)
