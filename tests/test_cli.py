"""The `migrate` and `alembic` commands as users run them: output, exit codes, bad input."""

from __future__ import annotations

import json

import pytest
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace, failing_revision

from orchestration import engine
from orchestration.cli import main


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_upgrade_verify_audit_round_trip(workspace: Workspace, capsys):
    code, out, _ = run(capsys, "upgrade")
    assert code == 0
    assert "dev: 7 revision(s) applied" in out
    assert out.count("  ok   ") == 7  # progress: one line per step
    assert "create ecommerce schema" in out

    code, out, _ = run(capsys, "verify")
    assert code == 0 and "PASS dev/ecommerce" in out and "PASS dev/analytics" in out

    code, out, _ = run(capsys, "audit", "--limit", "50")
    assert code == 0
    assert out.count(" migration ") == 7 and out.count(" verify ") == 2


def test_status_json(workspace: Workspace, capsys):
    assert run(capsys, "upgrade", "--schema", "ecommerce")[0] == 0
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0
    data = json.loads(out)
    by_schema = {s["schema"]: s for s in data["schemas"]}
    assert by_schema["ecommerce"]["current"] == ECOMMERCE_HEAD and by_schema["ecommerce"]["at_head"]
    assert by_schema["analytics"]["current"] is None
    assert [p["revision"] for p in by_schema["analytics"]["pending"]] == [
        "54886dd283f2",
        ANALYTICS_HEAD,
    ]


def test_upgrade_json_reports_steps(workspace: Workspace, capsys):
    code, out, _ = run(capsys, "upgrade", "--json", "--schema", "ecommerce")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    assert [s["alembic_version"] for s in data["steps"]][-1] == ECOMMERCE_HEAD


def test_verify_behind_head_exits_1(workspace: Workspace, capsys):
    run(capsys, "upgrade", "--to", "07e0f754c9d8")
    code, out, _ = run(capsys, "verify", "--schema", "ecommerce")
    assert code == 1
    assert "FAIL dev/ecommerce" in out and "3 revision(s) pending" in out


def test_failed_migration_exits_1_with_one_line_on_stderr(workspace: Workspace, capsys):
    workspace.add_revision(
        "ecommerce",
        "2024_03_01_0900-bad000000001_boom.py",
        failing_revision("bad000000001", ECOMMERCE_HEAD),
    )
    code, out, err = run(capsys, "upgrade", "--schema", "ecommerce")
    assert code == 1
    assert "FAIL ecommerce" in out
    assert err.count("\n") == 1 and "division by zero" in err
    assert "Traceback" not in out + err


def test_downgrade_needs_a_schema(workspace: Workspace, capsys):
    code, _, err = run(capsys, "downgrade", "--to", "-1")
    assert code == 2 and "--schema" in err


def test_downgrade_by_one_through_the_cli(workspace: Workspace, capsys):
    run(capsys, "upgrade")
    code, out, _ = run(capsys, "downgrade", "--schema", "ecommerce", "--to", "-1")
    assert code == 0 and "dev: 1 revision(s) reverted" in out
    # alembic_version keeps only analytics' head: fac149d9b774 is implied by its depends_on
    status = {s.schema: s for s in engine.status(workspace.project(), "dev")}
    assert status["ecommerce"].current == "fac149d9b774" and status["analytics"].at_head


def test_plan_prints_sql(workspace: Workspace, capsys):
    code, out, _ = run(capsys, "plan", "--schema", "ecommerce")
    assert code == 0
    assert "CREATE TABLE ecommerce.orders" in out
    assert workspace.version_heads() == set()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status", "--env", "qa"], "unknown environment 'qa'"),
        (["upgrade", "--env", "nope"], "unknown environment 'nope'"),
        (["upgrade", "--to", "deadbeef0000"], "unknown revision 'deadbeef0000'"),
        (["upgrade", "--schema", "billing"], "unknown schema 'billing'"),
        (["downgrade", "--schema", "ecommerce", "--to", "-1"], "cannot downgrade ecommerce by 1"),
        (["downgrade", "--schema", "ecommerce", "--to", "base", "--env", "x"], "unknown env"),
    ],
)
def test_bad_input_gets_one_line_exit_2_and_changes_nothing(
    workspace: Workspace, capsys, args, expected
):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("migrate: error: ") and err.count("\n") == 1
    assert expected in err
    assert out == ""
    assert workspace.version_heads() == set() and workspace.audit() == []


def test_unreachable_database_exits_2(workspace: Workspace, capsys, monkeypatch):
    monkeypatch.setenv("DEV_DATABASE_URL", "postgresql://postgres:s3cret-pw@127.0.0.1:1/nowhere")
    code, out, err = run(capsys, "upgrade")
    assert code == 2
    assert "cannot connect to the dev database" in err and err.count("\n") == 1
    assert "s3cret-pw" not in out + err


def test_missing_alembic_ini_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    code, _, err = run(capsys, "status")
    assert code == 2 and "no Alembic configuration" in err


def test_config_option_and_alembic_config_variable(
    workspace: Workspace, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "-c", str(workspace.ini), "status")[0] == 0
    monkeypatch.setenv("ALEMBIC_CONFIG", str(workspace.ini))
    assert run(capsys, "status")[0] == 0


def test_broken_revision_file_exits_2_naming_the_file(workspace: Workspace, capsys):
    workspace.add_revision("ecommerce", "2024_03_01_0900-broken000001_broken.py", "def upgrade(:\n")
    code, _, err = run(capsys, "upgrade")
    assert code == 2
    assert "broken000001_broken.py" in err and err.count("\n") == 1
    assert workspace.version_heads() == set()


def test_migrate_console_script_exit_codes(workspace: Workspace):
    ok = workspace.run("migrate", "upgrade", "--schema", "ecommerce")
    assert ok.returncode == 0, ok.stderr
    bad = workspace.run("migrate", "status", "--env", "qa")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("migrate: error:")
    helped = workspace.run("migrate", "--help")
    assert helped.returncode == 0
    for command in ("status", "plan", "upgrade", "downgrade", "verify", "audit"):
        assert command in helped.stdout


def test_plain_alembic_upgrade_writes_audit_rows(workspace: Workspace):
    done = workspace.run("alembic", "upgrade", "ecommerce@head")
    assert done.returncode == 0, done.stderr

    rows = workspace.audit()
    assert len(rows) == 5
    assert {r.schema_name for r in rows} == {"ecommerce"}
    assert all(r.success and r.operation == "migration" and r.run_id is None for r in rows)
    assert all(len(r.revision_checksum) == 64 for r in rows)

    current = workspace.run("alembic", "current")
    assert current.returncode == 0 and ECOMMERCE_HEAD in current.stdout
    history = workspace.run("alembic", "history", "--verbose")
    assert history.returncode == 0 and "Branch names: analytics" in history.stdout


def test_plain_alembic_takes_the_environment_from_x_env(workspace: Workspace):
    done = workspace.run("alembic", "-x", "env=staging", "upgrade", "heads")
    assert done.returncode == 0, done.stderr
    assert workspace.version_heads("staging") == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert workspace.version_heads("dev") == set()
    assert {r.environment for r in workspace.audit("staging")} == {"staging"}


def test_plain_alembic_offline_sql_needs_no_database(workspace: Workspace):
    done = workspace.run(
        "alembic",
        "upgrade",
        "base:ecommerce@head",
        "--sql",
        env_vars={"DEV_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE ecommerce.sellers" in done.stdout


def test_audit_plot_draws_the_history_as_a_timeline(workspace: Workspace, capsys, tmp_path):
    import xml.etree.ElementTree as ET

    run(capsys, "upgrade")
    run(capsys, "downgrade", "--schema", "analytics", "--to", "-1")
    run(capsys, "verify")  # analytics is behind: a failed verify
    picture = tmp_path / "timeline.svg"

    code, out, err = run(capsys, "audit", "--plot", str(picture), "--limit", "50")

    assert code == 0 and "wrote" in err and "(10 audit rows)" in err
    svg = ET.parse(picture).getroot()
    marks = [g.get("class") for g in svg.iter("{http://www.w3.org/2000/svg}g")]
    assert len(marks) == 10  # one mark per audit row
    assert marks.count("mark migration") == 7 and marks.count("mark rollback") == 1
    assert marks.count("mark verify") == 1 and marks.count("mark failed") == 1
    lanes = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {"ecommerce", "analytics"} <= lanes
    assert "alembic_version_history in dev" in out  # the table is still printed


def test_alembic_stamp_is_audited_with_where_the_table_was_and_is(workspace: Workspace):
    assert workspace.run("alembic", "stamp", "heads").returncode == 0
    assert workspace.run("alembic", "stamp", "base").returncode == 0

    rows = [
        (
            r.operation,
            r.operation_direction,
            r.schema_name,
            r.prev_alembic_version,
            r.alembic_version,
        )
        for r in workspace.audit()
    ]
    assert sorted(rows[:2]) == [
        ("stamp", "upgrade", "analytics", None, ANALYTICS_HEAD),
        ("stamp", "upgrade", "ecommerce", None, ECOMMERCE_HEAD),
    ]
    assert sorted(rows[2:]) == [
        ("stamp", "downgrade", "analytics", ANALYTICS_HEAD, None),
        ("stamp", "downgrade", "ecommerce", ECOMMERCE_HEAD, None),
    ]
    assert workspace.version_heads() == set()
