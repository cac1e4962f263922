"""The audit table as teams already have it: Audit-Alembic's, or an older one of ours.

A database that Audit-Alembic 0.2 (the real library, wired into env.py as its README
says) wrote its history to is taken over in place: its rows stay, new rows continue the
same table in its conventions, reading shows one timeline, and Audit-Alembic can keep
writing. The project's own tables carry a layout version and are upgraded in place; a
table of the same name that is not one we can use is one line and exit 2, nothing changed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace

from dagster_alembic import engine

# Audit-Alembic's quickstart env.py (its README), on the workspace's own revision files.
# Its `alembic_supports_callback()` check is left out: it calls inspect.getargspec, which
# Python 3.11 removed; Alembic 1.20 has on_version_apply.
AUDIT_ALEMBIC_ENV = """
from alembic import context
from sqlalchemy import engine_from_config, pool

import audit_alembic

auditor = audit_alembic.Auditor.create("app-2.4.1")


def run_migrations_online():
    connectable = engine_from_config(
        context.config.get_section(context.config.config_ini_section),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=None,
            on_version_apply=auditor.listen,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""

THEIR_COLUMNS = (
    "id, alembic_version, prev_alembic_version, operation_type, operation_direction, "
    "user_version, changed_at"
)


def _audit_alembic(workspace: Workspace) -> Config:
    """A plain Alembic environment with Audit-Alembic, on the dev database."""
    env_dir = workspace.root / "audit_alembic_env"
    env_dir.mkdir()
    (env_dir / "env.py").write_text(AUDIT_ALEMBIC_ENV)
    versions = workspace.versions
    ini = workspace.root / "audit_alembic.ini"
    ini.write_text(
        "[alembic]\n"
        f"script_location = {env_dir}\n"
        "path_separator = newline\n"
        f"version_locations =\n    {versions / 'ecommerce'}\n    {versions / 'analytics'}\n"
        f"sqlalchemy.url = {workspace.urls['dev'].render_as_string(False).replace('%', '%%')}\n"
    )
    return Config(str(ini))


def _their_rows(workspace: Workspace) -> list[sa.Row]:
    return workspace.rows(f"SELECT {THEIR_COLUMNS} FROM alembic_version_history ORDER BY id")


def _columns(workspace: Workspace, table: str = "alembic_version_history") -> list[tuple]:
    return [
        tuple(r)
        for r in workspace.rows(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = :t ORDER BY ordinal_position",
            t=table,
        )
    ]


def _constraints(workspace: Workspace) -> set[tuple]:
    return {
        tuple(r)
        for r in workspace.rows(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'public.alembic_version_history'::regclass"
        )
    }


def _comment(workspace: Workspace, table: str) -> str | None:
    return workspace.scalar(  # type: ignore[return-value]
        "SELECT obj_description(to_regclass(:t), 'pg_class')", t=f"public.{table}"
    )


def test_a_history_audit_alembic_wrote_is_taken_over_in_place(workspace: Workspace):
    audit_alembic = _audit_alembic(workspace)
    command.upgrade(audit_alembic, "da35ac5b8dce")
    command.downgrade(audit_alembic, "07e0f754c9d8")
    command.upgrade(audit_alembic, "da35ac5b8dce")
    theirs = _their_rows(workspace)
    assert [(r.operation_type, r.operation_direction) for r in theirs] == [
        ("migration", "up"),
        ("migration", "up"),
        ("migration", "up"),
        ("migration", "down"),
        ("migration", "up"),
    ]
    their_columns, their_constraints = _columns(workspace), _constraints(workspace)
    assert ("operation_type", "character varying", "NO") in their_columns
    assert ("changed_at", "timestamp without time zone", "YES") in their_columns

    # Reading changes nothing: `migrate audit` shows Audit-Alembic's rows in our terms.
    shown = workspace.run("migrate", "audit", "--json", "--limit", "50")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)["rows"]
    assert [r["id"] for r in listed] == [r.id for r in reversed(theirs)]
    assert [(r["operation"], r["operation_direction"]) for r in reversed(listed)] == [
        ("migration", "upgrade"),
        ("migration", "upgrade"),
        ("migration", "upgrade"),
        ("rollback", "downgrade"),
        ("migration", "upgrade"),
    ]
    assert listed[-1]["prev_alembic_version"] is None  # Audit-Alembic's '' for base
    assert all(r["success"] and r["user_version"] == "app-2.4.1" for r in listed)
    assert _columns(workspace) == their_columns

    # The pipeline continues the same table.
    project = workspace.project()
    result = engine.upgrade(project, "dev")
    assert result.ok, result.error
    assert len(result.steps) == 4  # two of ecommerce, two of analytics
    assert all(s.id is not None and s.changed_at.tzinfo is not None for s in result.steps)

    after = _their_rows(workspace)
    assert after[: len(theirs)] == theirs  # Audit-Alembic's rows as they were
    new = after[len(theirs) :]
    assert [r.id for r in new] == sorted(s.id for s in result.steps)
    assert min(r.id for r in new) > max(r.id for r in theirs)
    # ...in Audit-Alembic's conventions, in its own columns
    assert all(r.operation_type == "migration" and r.operation_direction == "up" for r in new)
    assert {r.alembic_version for r in new} == {
        "fac149d9b774",
        ECOMMERCE_HEAD,
        "54886dd283f2",
        ANALYTICS_HEAD,
    }
    assert all(r.prev_alembic_version is not None for r in new)  # '' for base, as theirs
    now = datetime.now(UTC).replace(tzinfo=None)
    assert all(r.changed_at.tzinfo is None for r in new)  # its column: UTC, no time zone
    assert all(abs(r.changed_at - now) < timedelta(minutes=5) for r in new)
    assert all(r.changed_at >= theirs[-1].changed_at for r in new)
    # ...with ours next to them; its columns, NOT NULLs and CHECK untouched
    assert _columns(workspace)[: len(their_columns)] == their_columns
    assert _constraints(workspace) == their_constraints
    ours = workspace.rows(
        "SELECT operation, schema_name, environment, success, revision_checksum "
        "FROM alembic_version_history WHERE id > :n ORDER BY id",
        n=theirs[-1].id,
    )
    assert all(r.operation == "migration" and r.success and r.environment == "dev" for r in ours)
    assert all(len(r.revision_checksum) == 64 for r in ours)
    assert {r.schema_name for r in ours} == {"ecommerce", "analytics"}
    assert _comment(workspace, "alembic_version_history").startswith(
        "migrate layout 1 audit-alembic"
    )

    # verify works on it (and writes its row in Audit-Alembic's conventions too)
    verified = workspace.run("migrate", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Traceback" not in verified.stderr
    checks = engine.verify(project, "dev")
    assert all(c.ok for c in checks), [c.findings for c in checks]
    # the revisions Audit-Alembic applied have no checksum: a warning, not an error
    warned = {f.revision for c in checks for f in c.findings if f.check == "checksum"}
    assert warned == {"7afdd87a5e29", "07e0f754c9d8", "da35ac5b8dce"}
    verify_row = _their_rows(workspace)[-1]
    assert (verify_row.operation_type, verify_row.operation_direction) == ("verify", "none")
    assert verify_row.alembic_version == ANALYTICS_HEAD

    # One timeline: Audit-Alembic's rows and ours, in order, in our terms.
    history = list(reversed(engine.history(project.settings, "dev", limit=100)))
    assert [r.id for r in history] == [r.id for r in _their_rows(workspace)]
    assert [r.operation for r in history[:5]] == [
        "migration",
        "migration",
        "migration",
        "rollback",
        "migration",
    ]
    assert [r.operation for r in history[5:]] == ["migration"] * 4 + ["verify"] * 4
    assert all(r.changed_at.tzinfo is not None for r in history)
    assert [r.changed_at for r in history] == sorted(r.changed_at for r in history)
    assert history[0].prev_alembic_version is None
    assert history[0].alembic_version == "7afdd87a5e29"
    assert all(r.operation_direction is None for r in history if r.operation == "verify")
    # Audit-Alembic's rows name no schema: they belong to each schema's history.
    analytics = list(
        reversed(engine.history(project.settings, "dev", schemas=["analytics"], limit=100))
    )
    assert [r.id for r in analytics] == [r.id for r in history if r.schema_name != "ecommerce"]
    assert [r.id for r in analytics[:5]] == [r.id for r in theirs]
    table = workspace.run("migrate", "audit", "--limit", "100")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    for row in history:
        assert any(line.split()[:1] == [str(row.id)] for line in lines), row.id
    assert sum(" rollback " in line and " downgrade " in line for line in lines) == 1

    # Audit-Alembic can keep writing to the same table...
    command.downgrade(audit_alembic, "54886dd283f2")
    last = _their_rows(workspace)[-1]
    assert (last.operation_type, last.operation_direction) == ("migration", "down")
    assert (last.alembic_version, last.prev_alembic_version) == ("54886dd283f2", ANALYTICS_HEAD)
    # ...and its rows join the timeline, and the pipeline carries on after them.
    (newest,) = engine.history(project.settings, "dev", limit=1)
    assert (newest.id, newest.operation, newest.schema_name) == (last.id, "rollback", None)
    again = engine.upgrade(project, "dev")
    assert again.ok and [s.alembic_version for s in again.steps] == [ANALYTICS_HEAD]
    assert all(c.ok for c in engine.verify(project, "dev"))
    assert _their_rows(workspace)[: len(theirs)] == theirs


def test_an_audit_alembic_table_with_a_not_null_column_of_its_own_is_refused(
    workspace: Workspace,
):
    """Auditor.create(extra_columns=...) can add a NOT NULL column our rows cannot fill:
    reading still works, writing is one line and exit 2, before anything changes."""
    import audit_alembic

    auditor = audit_alembic.Auditor.create(
        "app-1", extra_columns=[(sa.Column("deployed_by", sa.String(64), nullable=False), "ci")]
    )
    with sa.create_engine(workspace.urls["dev"], poolclass=sa.NullPool).begin() as conn:
        auditor.table.create(conn)
        conn.execute(
            auditor.table.insert().values(
                alembic_version="7afdd87a5e29",
                prev_alembic_version="",
                operation_type="migration",
                operation_direction="up",
                deployed_by="ci",
            )
        )
    columns = _columns(workspace)

    shown = workspace.run("migrate", "audit", "--json")
    upgraded = workspace.run("migrate", "upgrade")

    assert shown.returncode == 0, shown.stderr
    assert [r["alembic_version"] for r in json.loads(shown.stdout)["rows"]] == ["7afdd87a5e29"]
    assert upgraded.returncode == 2
    assert upgraded.stderr.splitlines() == [
        "migrate: error: table public.alembic_version_history is not one this release of the "
        "migration pipeline can use: its NOT NULL column(s) deployed_by have no default; "
        "nothing was changed (rename that table, or set [audit] schema in migrate.toml to "
        "another schema)"
    ]
    assert _columns(workspace) == columns
    assert workspace.version_heads() == set()


# --- the project's own tables: versioned, upgraded in place --------------------------------


@pytest.mark.parametrize(
    "dropped",
    [(), ("run_id", "duration_ms", "error")],
    ids=["as-released-before-versioning", "an-older-layout-without-some-columns"],
)
def test_a_version_less_table_of_ours_is_upgraded_in_place_and_keeps_its_rows(
    workspace: Workspace, dropped: tuple[str, ...]
):
    project = workspace.project()
    first = engine.upgrade(project, "dev", to="da35ac5b8dce")
    assert first.ok, first.error
    # The database as the release before versioning left it: the same tables, no mark
    # (and, for an older layout, fewer columns).
    with workspace.connect() as conn:
        conn.execute(sa.text("COMMENT ON TABLE alembic_version_history IS NULL"))
        conn.execute(sa.text("COMMENT ON TABLE alembic_schema_snapshot IS NULL"))
        for column in dropped:
            conn.execute(sa.text(f"ALTER TABLE alembic_version_history DROP COLUMN {column}"))
        conn.commit()
    before = workspace.audit()
    snapshots = workspace.rows("SELECT * FROM alembic_schema_snapshot ORDER BY 1, 2")
    assert len(before) == 3 and _comment(workspace, "alembic_version_history") is None

    result = engine.upgrade(project, "dev")
    checks = engine.verify(project, "dev")

    assert result.ok, result.error
    assert all(c.ok for c in checks), [c.findings for c in checks]
    # the old rows read as ours: their checksums are what verify checked, no warning
    assert not [f for c in checks for f in c.findings if f.check == "checksum"]
    rows = workspace.audit()
    assert [r._asdict() for r in rows[:3]] == [
        {**r._asdict(), **dict.fromkeys(dropped)} for r in before
    ]
    assert len(rows) == 3 + 4 + 2  # four steps, two verify rows
    assert all(r.run_id is None for r in rows)
    assert all(r.duration_ms is not None for r in rows[3:7])  # the re-added columns fill
    kept = workspace.rows("SELECT * FROM alembic_schema_snapshot ORDER BY 1, 2")
    assert [r for r in kept if r.revision == "da35ac5b8dce"] == [
        r for r in snapshots if r.revision == "da35ac5b8dce"
    ]
    assert _comment(workspace, "alembic_version_history") == "migrate layout 1 own"
    assert _comment(workspace, "alembic_schema_snapshot") == "migrate layout 1 own"


def test_a_table_of_ours_is_marked_with_its_layout_once(workspace: Workspace):
    """A database this release created needs no DDL afterwards: no ALTER or COMMENT per
    command (a catalog write would take a lock on the table every run)."""
    project = workspace.project()
    assert engine.upgrade(project, "dev", to="7afdd87a5e29").ok
    assert _comment(workspace, "alembic_version_history") == "migrate layout 1 own"
    assert _comment(workspace, "alembic_schema_snapshot") == "migrate layout 1 own"
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        assert engine.upgrade(project, "dev").ok
        assert all(c.ok for c in engine.verify(project, "dev"))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    assert not [s for s in statements if s.startswith(("ALTER TABLE", "COMMENT ON"))]
    assert len([s for s in statements if "migrate_audit_tables" in s]) == 2  # one a command


# --- a table of the same name that is not ours ----------------------------------------------

FOREIGN = {
    "no-id": (
        "CREATE TABLE public.alembic_version_history (version text NOT NULL, applied_at "
        "timestamptz); INSERT INTO public.alembic_version_history VALUES ('v1', now())",
        "table public.alembic_version_history is not one this release of the migration "
        "pipeline can use: it lacks an audit table's column(s) alembic_version, changed_at, id, "
        "operation, prev_alembic_version, success",
        ("upgrade", "verify", "audit"),
    ),
    "a-view": (
        "CREATE VIEW public.alembic_version_history AS SELECT 1 AS id",
        "table public.alembic_version_history is not one this release of the migration "
        "pipeline can use: it is not a table",
        ("upgrade", "verify", "audit"),
    ),
    "newer": (
        "CREATE TABLE public.alembic_version_history (id bigint, alembic_version text, "
        "prev_alembic_version text, operation text, changed_at timestamptz, success boolean, "
        "spare text); COMMENT ON TABLE public.alembic_version_history IS 'migrate layout 7 own'",
        "table public.alembic_version_history has layout 7, written by a newer release of "
        "the migration pipeline (this one knows layout 1): upgrade the pipeline",
        ("upgrade", "verify", "audit"),
    ),
    "snapshot-table": (
        "CREATE TABLE public.alembic_schema_snapshot (id int, payload text)",
        "table public.alembic_schema_snapshot is not one this release of the migration "
        "pipeline can use: it lacks the column(s) revision, schema_name, snapshot",
        ("upgrade", "verify"),
    ),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_a_table_of_our_name_that_we_cannot_use_is_one_line_exit_2_and_nothing_changes(
    workspace: Workspace, case: str
):
    ddl, message, refusing = FOREIGN[case]
    with workspace.connect() as conn:
        conn.exec_driver_sql(ddl)
        conn.commit()

    def state() -> tuple:
        return (
            _columns(workspace),
            _columns(workspace, "alembic_schema_snapshot"),
            _comment(workspace, "alembic_version_history"),
            workspace.rows(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            ),
        )

    before = state()
    for command_name in refusing:
        done = workspace.run("migrate", command_name)
        assert done.returncode == 2, (command_name, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"migrate: error: {message}"), (
            command_name,
            done.stderr,
        )
        assert done.stdout == ""
        assert state() == before
    assert workspace.version_heads() == set()
    assert not workspace.rows(
        "SELECT 1 FROM information_schema.schemata WHERE schema_name = 'ecommerce'"
    )


def test_the_layout_mark_keeps_a_comment_that_was_there(workspace: Workspace):
    """Taking over a table a team commented keeps their words after our mark."""
    command.upgrade(_audit_alembic(workspace), "7afdd87a5e29")
    with workspace.connect() as conn:
        conn.execute(sa.text("COMMENT ON TABLE alembic_version_history IS 'ops: 100% kept'"))
        conn.commit()

    assert engine.upgrade(workspace.project(), "dev", to="07e0f754c9d8").ok

    assert _comment(workspace, "alembic_version_history") == (
        "migrate layout 1 audit-alembic\nops: 100% kept"
    )
