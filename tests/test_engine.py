"""The engine against a real PostgreSQL: upgrade, downgrade, audit rows, plan, verify."""

from __future__ import annotations

import hashlib

from conftest import (
    ANALYTICS_HEAD,
    ECOMMERCE_HEAD,
    Workspace,
    failing_revision,
    simple_revision,
)

from dagster_alembic import engine

ECOMMERCE_CHAIN = ["7afdd87a5e29", "07e0f754c9d8", "da35ac5b8dce", "fac149d9b774", ECOMMERCE_HEAD]
ANALYTICS_CHAIN = ["54886dd283f2", ANALYTICS_HEAD]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upgrade_all_to_head_writes_one_audit_row_per_revision(workspace: Workspace):
    project = workspace.project()
    seen = []

    result = engine.upgrade(project, "dev", on_step=seen.append)

    assert result.ok, result.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert {"customers", "orders", "order_items", "products", "sellers", "payments", "reviews"} <= (
        workspace.tables("ecommerce")
    )
    rows = workspace.audit()
    assert len(rows) == 7 == len(result.steps) == len(seen)
    by_rev = {r.alembic_version: r for r in rows}
    assert set(by_rev) == set(ECOMMERCE_CHAIN + ANALYTICS_CHAIN)
    for row in rows:
        revision = project.revision(row.alembic_version)
        assert row.operation == "migration" and row.operation_direction == "upgrade"
        assert row.success is True and row.error is None
        assert row.environment == "dev" and row.schema_name == revision.schema
        assert row.revision_checksum == _sha256(revision.path)
        assert row.duration_ms > 0
        assert row.executed_by.startswith("postgres")
        assert row.run_id is None
        assert row.user_version == revision.create_date
        assert row.changed_at is not None
    # each row links to the one before it in its schema
    for chain in (ECOMMERCE_CHAIN, ANALYTICS_CHAIN):
        assert [by_rev[r].prev_alembic_version for r in chain] == [None, *chain[:-1]]


def test_upgrade_is_idempotent(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    second = engine.upgrade(project, "dev")
    assert second.ok and second.steps == []
    assert len(workspace.audit()) == 7


def test_upgrade_one_schema_brings_its_dependency_along_only_as_far_as_needed(
    workspace: Workspace,
):
    project = workspace.project()

    result = engine.upgrade(project, "dev", schemas=["analytics"], run_id="run-123")

    assert result.ok, result.error
    status = {s.schema: s for s in engine.status(project, "dev")}
    assert status["analytics"].at_head
    # analytics depends on fac149d9b774, not on the later index revision
    assert status["ecommerce"].current == "fac149d9b774"
    assert [r.revision for r in status["ecommerce"].pending] == [ECOMMERCE_HEAD]
    assert {r.run_id for r in workspace.audit()} == {"run-123"}
    assert [r.alembic_version for r in workspace.audit()] == ECOMMERCE_CHAIN[:4] + ANALYTICS_CHAIN


def test_upgrade_ecommerce_alone_leaves_analytics_at_base(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev", schemas=["ecommerce"]).ok
    status = {s.schema: s for s in engine.status(project, "dev")}
    assert status["ecommerce"].at_head
    assert status["analytics"].current is None
    assert "analytics" not in {r.schema_name for r in workspace.audit()}


def test_upgrade_to_a_named_revision(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev", to="da35ac5b8dce").ok
    assert workspace.version_heads() == {"da35ac5b8dce"}
    assert len(workspace.audit()) == 3


def test_downgrade_by_one_writes_a_rollback_row(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok

    result = engine.downgrade(project, "dev", schemas=["analytics"], to="-1")

    assert result.ok, result.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD, "54886dd283f2"}
    assert "seller_performance" not in workspace.tables("analytics")
    last = workspace.audit()[-1]
    assert (last.operation, last.operation_direction) == ("rollback", "downgrade")
    assert (last.prev_alembic_version, last.alembic_version) == (ANALYTICS_HEAD, "54886dd283f2")
    assert last.success and last.schema_name == "analytics"


def test_downgrade_to_a_revision_takes_dependents_down_first(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok

    result = engine.downgrade(project, "dev", schemas=["ecommerce"], to="da35ac5b8dce")

    assert result.ok, result.error
    rollbacks = [r for r in workspace.audit() if r.operation == "rollback"]
    reverted = [r.prev_alembic_version for r in rollbacks]
    # analytics depends on fac149d9b774: both of its revisions go before that one
    assert reverted.index(ANALYTICS_HEAD) < reverted.index("fac149d9b774")
    assert set(reverted) == {ECOMMERCE_HEAD, "fac149d9b774", *ANALYTICS_CHAIN}
    assert all(r.success for r in rollbacks)
    # each row's id came back with the version statement it rode in (UPDATE, or the
    # DELETE of a schema's last revision)
    assert sorted(r.id for r in rollbacks) == sorted(s.id for s in result.steps)
    status = {s.schema: s for s in engine.status(project, "dev")}
    assert status["ecommerce"].current == "da35ac5b8dce"
    assert status["analytics"].current is None
    assert "order_items" not in workspace.tables("ecommerce")


def test_failing_revision_leaves_previous_revision_and_a_failed_audit_row(workspace: Workspace):
    path = workspace.add_revision(
        "ecommerce",
        "2024_03_01_0900-bad000000001_boom.py",
        failing_revision("bad000000001", ECOMMERCE_HEAD),
    )
    project = workspace.project()

    result = engine.upgrade(project, "dev", schemas=["ecommerce"])

    assert not result.ok
    assert "division by zero" in result.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD}
    assert "half_done" not in workspace.tables("ecommerce")
    failed = workspace.audit()[-1]
    assert failed.success is False
    assert failed.alembic_version == "bad000000001"
    assert failed.prev_alembic_version == ECOMMERCE_HEAD
    assert failed.operation == "migration" and "division by zero" in failed.error
    assert failed.revision_checksum == _sha256(path)
    assert sum(r.success for r in workspace.audit()) == 5  # the revisions before it

    # fixed file: a rerun continues from where it stopped
    path.write_text(simple_revision("bad000000001", ECOMMERCE_HEAD, "half_done", "fixed"))
    rerun = engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"])
    assert rerun.ok, rerun.error
    assert [s.alembic_version for s in rerun.steps] == ["bad000000001"]
    assert "half_done" in workspace.tables("ecommerce")


def test_plan_renders_the_sql_and_changes_nothing(workspace: Workspace):
    project = workspace.project()

    plans = {p.schema: p for p in engine.plan(project, "dev")}

    assert [r.revision for r in plans["ecommerce"].steps] == ECOMMERCE_CHAIN
    assert "CREATE TABLE ecommerce.customers" in plans["ecommerce"].sql
    assert "CREATE INDEX CONCURRENTLY" in plans["ecommerce"].sql
    assert "CREATE VIEW analytics.daily_sales" in plans["analytics"].sql
    # the analytics plan starts after its dependency: ecommerce DDL is not rendered twice
    assert "ecommerce.customers" not in plans["analytics"].sql
    assert workspace.version_heads() == set()
    assert workspace.audit() == []
    assert workspace.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'ecommerce'") == 0


def test_plan_after_partial_upgrade_shows_only_pending(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev", to="fac149d9b774").ok
    plans = {p.schema: p for p in engine.plan(project, "dev")}
    assert [r.revision for r in plans["ecommerce"].steps] == [ECOMMERCE_HEAD]
    assert "ix_orders_customer_id" in plans["ecommerce"].sql
    assert "CREATE TABLE ecommerce.customers" not in plans["ecommerce"].sql


def test_verify_passes_at_head_and_writes_a_verify_row(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok

    results = engine.verify(project, "dev", run_id="r1")

    assert [r.ok for r in results] == [True, True], [r.findings for r in results]
    rows = [r for r in workspace.audit() if r.operation == "verify"]
    assert {(r.schema_name, r.success, r.run_id) for r in rows} == {
        ("ecommerce", True, "r1"),
        ("analytics", True, "r1"),
    }
    assert {r.id for r in rows} == {r.audit_id for r in results}


def test_verify_fails_behind_head(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev", to="da35ac5b8dce").ok

    (result,) = engine.verify(project, "dev", ["ecommerce"])

    assert not result.ok
    assert [f.check for f in result.findings if f.severity == "error"] == ["at_head"]
    row = workspace.audit()[-1]
    assert row.operation == "verify" and row.success is False and "2 revision(s)" in row.error


def test_verify_fails_after_an_applied_revision_file_is_edited(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    edited = project.revision("07e0f754c9d8").path
    edited.write_text(edited.read_text() + "\n# edited after it was applied\n")

    results = {r.schema: r for r in engine.verify(workspace.project(), "dev")}

    assert results["analytics"].ok
    ecommerce = results["ecommerce"]
    assert not ecommerce.ok
    (finding,) = [f for f in ecommerce.findings if f.severity == "error"]
    assert finding.check == "checksum" and finding.revision == "07e0f754c9d8"
    assert edited.name in finding.message


def test_verify_runs_a_revision_level_verify_hook(workspace: Workspace):
    body = simple_revision("hook00000001", ECOMMERCE_HEAD, "audited_things")
    body += (
        "\n\ndef verify(connection):\n"
        "    n = connection.exec_driver_sql('SELECT count(*) FROM ecommerce.audited_things')"
        ".scalar()\n"
        "    return True if n > 0 else 'audited_things is empty'\n"
    )
    workspace.add_revision("ecommerce", "2024_03_02_0900-hook00000001_add.py", body)
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok

    (failing,) = engine.verify(project, "dev", ["ecommerce"])
    assert not failing.ok
    assert "audited_things is empty" in failing.findings[0].message

    with workspace.connect() as conn:
        conn.exec_driver_sql("INSERT INTO ecommerce.audited_things VALUES (1)")
        conn.commit()
    (passing,) = engine.verify(project, "dev", ["ecommerce"])
    assert passing.ok, passing.findings


def test_environments_are_separate_databases(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "staging", schemas=["ecommerce"]).ok
    assert workspace.version_heads("staging") == {ECOMMERCE_HEAD}
    assert workspace.version_heads("dev") == set()
    assert {r.environment for r in workspace.audit("staging")} == {"staging"}


def test_each_step_carries_the_sql_it_ran(workspace: Workspace):
    result = engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"])
    by_rev = {row.alembic_version: row for row in result.steps}
    assert any("CREATE TABLE ecommerce.customers" in s for s in by_rev["07e0f754c9d8"].sql)
    assert any("CREATE INDEX CONCURRENTLY" in s for s in by_rev[ECOMMERCE_HEAD].sql)
    everything = " ".join(s for row in result.steps for s in row.sql)
    assert "alembic_version" not in everything  # bookkeeping is not the revision's SQL


def test_a_long_chain_in_shuffled_file_order_is_read_base_first(workspace: Workspace):
    """3000 revisions whose file names sort in no useful order (Alembic's default template
    starts names with the random id): deeper than Python's recursion limit, still ordered."""
    import random

    chain = [f"{i:012x}" for i in range(0x10000, 0x10000 + 3000)]
    names = random.Random(5).sample(range(10**6), len(chain))
    down = ECOMMERCE_HEAD
    for rev, name in zip(chain, names, strict=True):
        workspace.add_revision(
            "ecommerce", f"{name:06d}_{rev}_t.py", simple_revision(rev, down, f"t{rev}")
        )
        down = rev

    project = workspace.project()

    ecommerce = [r.revision for r in project.revisions("ecommerce")]
    assert ecommerce == ECOMMERCE_CHAIN + chain
    assert project.head("ecommerce") == chain[-1]


def test_revision_readings_are_cached_by_content_like_bytecode(workspace: Workspace, monkeypatch):
    import json
    import sys

    from dagster_alembic import scan

    cache = workspace.versions / "ecommerce" / "__pycache__" / scan.CACHE_NAME
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    first = workspace.project().revisions("ecommerce")[0]
    assert not cache.exists()  # PYTHONDONTWRITEBYTECODE: no cache written, as for .pyc

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    workspace.project()
    content = json.loads(cache.read_text())
    assert first.checksum in content["readings"]

    # Readings are found by the checksum of the file's bytes: a changed reading in the
    # cache shows (the file was not parsed again)...
    content["readings"][first.checksum]["message"] = "read from the cache"
    cache.write_text(json.dumps(content))
    assert workspace.project().revision(first.revision).message == "read from the cache"
    # ...and an edited file has another checksum: parsed again, never a stale reading.
    first.path.write_text(first.path.read_text().replace(first.message, "edited message", 1))
    assert workspace.project().revision(first.revision).message == "edited message"
    # A cache that is not ours, or broken, is ignored.
    cache.write_text("{not json")
    assert workspace.project().revision(first.revision).message == "edited message"


def test_the_audit_row_writes_every_column_the_server_does_not_fill():
    from dagster_alembic import audit

    columns = {c.name for c in audit.audit_table("public").columns}
    assert set(audit._STORED) == columns - {"id", "changed_at"}


def test_each_audit_row_rides_in_the_version_update_no_round_trip_of_its_own(
    workspace: Workspace,
):
    import sqlalchemy as sa

    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        result = engine.upgrade(workspace.project(), "dev")
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)

    assert result.ok and len(result.steps) == 7
    carried = [s for s in statements if s.startswith("WITH migrate_audit_row AS (INSERT")]
    # The first revision of each schema (2 here) inserts its version row with SQLAlchemy's
    # own RETURNING: its audit row is an INSERT of its own. Every other step: one statement.
    assert len(carried) == 5
    assert all(" UPDATE alembic_version SET version_num=" in s for s in carried)
    ids = [row.id for row in result.steps]
    assert None not in ids and len(set(ids)) == 7
    assert [r.id for r in workspace.audit()] == sorted(ids)


def test_an_audit_schema_of_its_own_gets_every_row(workspace: Workspace):
    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text().replace('schema = "public"', 'schema = "migration_audit"'))
    project = workspace.project()

    result = engine.upgrade(project, "dev")
    (check,) = engine.verify(project, "dev", ["ecommerce"])

    assert result.ok and check.ok, (result.error, check.findings)
    rows = workspace.rows(
        "SELECT id, operation, alembic_version FROM migration_audit.alembic_version_history"
    )
    assert sorted(r.id for r in rows) == sorted([s.id for s in result.steps] + [check.audit_id])
    assert workspace.audit() == []  # nothing in public


def test_alembic_still_hands_env_py_the_step_generator(workspace: Workspace):
    """runtime.tracked_steps reads the command's ``fn`` through the proxy env.py sees and
    hands a wrapper back through ``configure(fn=...)`` (failed steps are audited through
    it): fail loudly if Alembic stops routing either way."""
    import io

    from alembic import context
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    from dagster_alembic.runtime import tracked_steps

    seen: list[str] = []

    def commands_fn(heads, ctx):
        seen.append("alembic's")
        return iter(())

    class Recorder:
        def track(self, fn):
            def tracked(heads, ctx):
                seen.append("ours")
                return fn(heads, ctx)

            return tracked

    config = Config(str(workspace.ini))
    with EnvironmentContext(config, ScriptDirectory.from_config(config), fn=commands_fn):
        wrapper = tracked_steps(context, Recorder())  # type: ignore[arg-type]
        context.configure(
            dialect_name="postgresql", as_sql=True, output_buffer=io.StringIO(), fn=wrapper
        )
        context.run_migrations()
    assert seen == ["ours", "alembic's"]
