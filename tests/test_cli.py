"""The `migrate` and `alembic` commands as users run them: output, exit codes, bad input."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    ANALYTICS_HEAD,
    ECOMMERCE_HEAD,
    ENV_URL_VARS,
    Workspace,
    failing_revision,
    revision_file,
    simple_revision,
)

from dagster_alembic import embedded, engine, launcher
from dagster_alembic.cli import main
from dagster_alembic.urls import display_url


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
    # the revision first, then the cause (the Dagster failure's line is the same)
    assert err.startswith("dev/ecommerce: revision bad000000001 (")
    assert "failed: " in err and err.index("bad000000001") < err.index("division by zero")
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


def test_the_audit_history_stays_readable_while_a_revision_file_is_broken(
    workspace: Workspace, capsys
):
    assert run(capsys, "upgrade", "--schema", "ecommerce")[0] == 0
    workspace.add_revision("ecommerce", "2024_03_01_0900-broken000001_broken.py", "def upgrade(:\n")
    code, out, err = run(capsys, "audit", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert ECOMMERCE_HEAD in {r["alembic_version"] for r in rows}
    assert run(capsys, "status")[0] == 2  # what needs the files still says what is wrong
    code, _, err = run(capsys, "audit", "--schema", "nope")
    assert code == 2 and "unknown schema 'nope' (known: ecommerce, analytics)" in err


def test_migrate_console_script_exit_codes(workspace: Workspace):
    ok = workspace.run("migrate", "upgrade", "--schema", "ecommerce")
    assert ok.returncode == 0, ok.stderr
    bad = workspace.run("migrate", "status", "--env", "qa")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("migrate: error:")
    helped = workspace.run("migrate", "--help")
    assert helped.returncode == 0
    for command in ("status", "plan", "upgrade", "downgrade", "verify", "audit"):
        assert command in helped.stdout


def test_the_command_freezes_what_its_imports_built_and_collects_the_rest():
    """entry(): no collection walks SQLAlchemy's and Alembic's import-time objects (frozen),
    while garbage the command itself makes is still collected; main() called from Python
    leaves the caller's collector as it was."""
    probe = (
        "import gc, sys\n"
        "from dagster_alembic import cli\n"
        "cli._own_process = True\n"
        "gc.disable()\n"
        "cli._import_engine()\n"
        "assert gc.isenabled(), 'collector left off'\n"
        "assert gc.get_freeze_count() > 20000, gc.get_freeze_count()\n"
        "assert 'sqlalchemy' in sys.modules\n"
        "class Cycle:\n"
        "    pass\n"
        "a = Cycle(); a.me = a; del a\n"
        "assert gc.collect() >= 1, 'a cycle made after the imports was not collected'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    script = Path(sys.executable).parent / "migrate"
    assert "import entry" in script.read_text()  # the installed command goes through entry()


def test_main_in_process_leaves_the_collector_alone(workspace: Workspace, capsys):
    import gc

    frozen = gc.get_freeze_count()
    assert run(capsys, "status")[0] == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen


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


# --- secrets in every form (issue 11, item 9) ---------------------------------------------

TYPED_PASSWORD = "Hunter2%25Sekr!t"  # typed in a URL; the password itself is Hunter2%Sekr!t


@pytest.fixture(scope="session")
def secret_role(server_url):
    """A superuser role whose password has a percent sign and a `!` (checked unless the
    server trusts every local connection). Objects it creates go with the test databases."""
    name = f"secret_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD 'Hunter2%Sekr!t'"))
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP ROLE IF EXISTS {name}"))
    admin.dispose()


def _typed_url(url, spelling: str, role: str, form: str) -> str:
    """The URL of ``url``'s database as a person types it, password in userinfo or query."""
    where = f"{url.host}:{url.port}" if url.host else ""
    query = dict(url.query)
    if form == "userinfo":
        userinfo = f"{role}:{TYPED_PASSWORD}@"
    else:
        userinfo = f"{role}@"
        query["password"] = "Hunter2%25Sekr%21t"
    tail = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{spelling}://{userinfo}{where}/{url.database}" + (f"?{tail}" if tail else "")


LEAKY = """
    import os
    url = os.environ["DEV_DATABASE_URL"]
    decoded = sa.engine.make_url(url).password or sa.engine.make_url(url).query["password"]
    raise RuntimeError(f"cannot reach {url} (password {decoded})")"""


@pytest.mark.parametrize("form", ["userinfo", "query"])
@pytest.mark.parametrize("spelling", ["postgresql", "postgres", "postgresql+psycopg2"])
def test_a_password_in_any_form_reaches_no_output_and_no_audit_row(
    workspace: Workspace, capsys, monkeypatch, secret_role, spelling, form
):
    typed = _typed_url(workspace.urls["dev"], spelling, secret_role, form)
    monkeypatch.setenv("DEV_DATABASE_URL", typed)
    workspace.add_revision(
        "ecommerce",
        "2024_03_01_0900-leak00000001_leak.py",
        revision_file("leak00000001", ECOMMERCE_HEAD, LEAKY),
    )
    outputs = []
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "upgrade", "--schema", "ecommerce", *extra)
        assert code == 1 and "cannot reach" in out + err
        outputs.append(out + err)
    code, out, err = run(capsys, "audit", "--json", "--limit", "50")
    outputs.append(out + err)
    errors = [r.error for r in workspace.audit() if r.error]
    assert len(errors) == 2 and all("cannot reach" in e for e in errors)
    for text in [*outputs, *errors]:
        assert "Sekr" not in text, text


def test_a_query_password_is_masked_when_the_database_is_unreachable(
    workspace: Workspace, capsys, monkeypatch
):
    monkeypatch.setenv(
        "DEV_DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere?password=s3cret%25pw"
    )
    code, out, err = run(capsys, "status")
    assert code == 2 and err.count("\n") == 1
    assert "127.0.0.1:1/nowhere?password=***" in err
    assert "s3cret" not in out + err


def test_env_command_prints_no_query_password(workspace: Workspace, capsys, monkeypatch):
    monkeypatch.setenv(
        "DAGSTER_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/dagster?password=s3cret"
    )
    code, out, err = run(capsys, "env")
    assert code == 0 and "DAGSTER_POSTGRES_URL" in out
    assert "s3cret" not in out + err


def test_dagster_home_is_private(workspace: Workspace, tmp_path):
    settings = workspace.project().settings
    fresh = launcher.prepare_dagster_home(settings, tmp_path / "home")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    existing = tmp_path / "open"
    existing.mkdir(mode=0o777)
    existing.chmod(0o777)
    assert stat.S_IMODE(launcher.prepare_dagster_home(settings, existing).stat().st_mode) == 0o700


# --- the target is never a surprise (issue 11, item 10) -----------------------------------


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_url_variable_is_an_error_not_the_embedded_server(
    workspace: Workspace, capsys, monkeypatch, tmp_path, request, value
):
    monkeypatch.setenv(embedded.DATA_DIR_ENV, str(tmp_path / "pgdata"))
    request.addfinalizer(lambda: embedded.stop_server(workspace.root))  # if one was started
    for var in ENV_URL_VARS:
        monkeypatch.setenv(var, value)
    code, out, err = run(capsys, "status")
    assert code == 2 and out == ""
    assert err.startswith("migrate: error: DEV_DATABASE_URL is set but empty")
    assert err.count("\n") == 1
    assert not (tmp_path / "pgdata").exists()


def test_an_empty_url_variable_of_another_environment_is_an_error_too(
    workspace: Workspace, capsys, monkeypatch
):
    monkeypatch.setenv("PROD_DATABASE_URL", "")
    code, _, err = run(capsys, "status")
    assert code == 2 and "PROD_DATABASE_URL is set but empty" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["plan"],
        ["upgrade", "--schema", "ecommerce"],
        ["verify"],
        ["audit"],
        ["downgrade", "--schema", "ecommerce", "--to", "base"],
    ],
)
def test_every_command_names_its_target_first(
    workspace: Workspace, capsys, monkeypatch, secret_role, args
):
    url = workspace.urls["dev"].set(username=secret_role, password="Hunter2%Sekr!t")
    monkeypatch.setenv("DEV_DATABASE_URL", url.render_as_string(hide_password=False))
    if args[0] == "downgrade":
        assert run(capsys, "upgrade", "--schema", "ecommerce")[0] == 0
    code, out, err = run(capsys, *args)
    assert code in (0, 1), err  # verify of a fresh database fails: it is behind head
    where = (  # host:port, or the socket folder of a server reached that way (embedded)
        f"{url.host}:{url.port}/{url.database}"
        if url.host
        else f"/{url.database}?host={url.query['host']}"
    )
    shown = f"postgresql+psycopg2://{secret_role}:***@{where}"
    sql_comment = "-- " if args[0] == "plan" else ""  # plan's output stays valid SQL
    assert out.splitlines()[0] == f"{sql_comment}dev: {shown}"

    code, out, _ = run(capsys, *args, "--json")
    document = json.loads(out)
    assert document["target"] == shown and document["embedded"] is False


# --- bad input is one line and exit 2; empty results are results (issue 11, item 11) ------

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


def test_audit_of_a_new_database_is_an_empty_table(workspace: Workspace, capsys):
    code, out, err = run(capsys, "audit")
    assert code == 0, err
    assert out.splitlines()[1] == "alembic_version_history in dev (newest first)"
    assert out.splitlines()[2].split() == ["id", "changed_at", "schema", "operation",
                                           "direction", "from", "to", "ok", "ms",
                                           "checksum", "run_id", "error"]  # fmt: skip
    assert len(out.splitlines()) == 4  # target, title, header, rule
    code, out, _ = run(capsys, "audit", "--json")
    assert code == 0 and json.loads(out)["rows"] == []


def test_a_history_that_names_no_schema_is_one_line_with_the_fix(workspace: Workspace, capsys):
    """No version_locations: Alembic's default folder, migrations/versions. Its name is no
    PostgreSQL schema, so migrate.toml must say which schema it manages."""
    for folder in workspace.versions.iterdir():
        shutil.rmtree(folder)
    ini = workspace.ini.read_text()
    start = ini.index("version_locations =")
    end = ini.index("\n\n", start)
    workspace.ini.write_text(ini[:start] + ini[end:])

    code, out, err = run(capsys, "status")

    assert code == 2 and out == ""
    assert err.count("\n") == 1 and '[schemas] "migrations/versions" = "public"' in err

    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text() + '\n[schemas]\n"migrations/versions" = "public"\n')
    code, out, err = run(capsys, "status")
    assert code == 0, err
    assert out.splitlines()[2].split() == ["schema", "current", "head", "at", "head"]
    assert out.splitlines()[4].split()[:2] == ["public", "base"]
    code, out, _ = run(capsys, "status", "--json")
    (schema,) = json.loads(out)["schemas"]
    assert code == 0 and (schema["schema"], schema["pending"]) == ("public", [])


def run_or_exit(capsys, *args: str) -> tuple[int, str, str]:
    """main(), also when argparse itself rejects the command line (SystemExit)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["audit", "--limit", "-1"], "--limit must be a whole number >= 1"),
        (["audit", "--limit", "0"], "--limit must be a whole number >= 1"),
        (["audit", "--limit", "many"], "invalid int value: 'many'"),
        (["audit", "--plot", "/nonexistent/folder/timeline.svg"], "cannot write --plot"),
        (["audit", "--plot", "."], "cannot write --plot"),
        (["upgrade", "--to", "x;drop"], "--to 'x;drop' is not a revision id"),
        (["downgrade", "--schema", "ecommerce", "--to", "x;drop"], "is not a revision id"),
        (["downgrade", "--schema", "ecommerce", "--to", "-0"], "--to -0"),
        (["upgrade", "--schema", "ecommerce", "--to", " "], "is not a revision id"),
        (["statuz"], "invalid choice: 'statuz'"),
    ],
)
def test_bad_input_is_found_before_connecting(
    workspace: Workspace, capsys, monkeypatch, args, expected
):
    """Checked before connecting: with an unreachable database, the error is the input's."""
    monkeypatch.setenv("DEV_DATABASE_URL", UNREACHABLE)
    code, out, err = run_or_exit(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("migrate: error: ") and err.count("\n") == 1, err
    assert expected in err and "cannot connect" not in err


def test_a_programming_error_is_an_internal_error_with_its_traceback(
    workspace: Workspace, capsys, monkeypatch
):
    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(engine, "status", broken)
    code, _, err = run(capsys, "status")
    assert code == 1
    first = err.splitlines()[0]
    assert first == (
        "migrate: internal error: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    )
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "failed" not in err


def test_the_embedded_server_is_named_as_such(workspace: Workspace, capsys, monkeypatch, tmp_path):
    for var in ENV_URL_VARS:
        monkeypatch.delenv(var)
    monkeypatch.setenv(embedded.DATA_DIR_ENV, str(tmp_path / "pgdata"))
    try:
        code, out, err = run(capsys, "status")
        assert code == 0, err
        first = out.splitlines()[0]
        assert first.startswith("dev: postgresql+psycopg2://") and first.endswith(" (embedded)")
        assert "/dev?host=" in first and str(tmp_path / "pgdata") in first
        code, out, _ = run(capsys, "status", "--json")
        assert json.loads(out)["embedded"] is True
    finally:
        embedded.stop_server(workspace.root)


def test_baseline_accepts_drift_with_an_audit_row_and_verify_passes_again(
    workspace: Workspace, capsys
):
    import sqlalchemy as sa

    assert run(capsys, "upgrade", "--schema", "ecommerce", "--to", "fac149d9b774")[0] == 0
    with workspace.connect() as conn:
        conn.execute(sa.text("CREATE TABLE ecommerce.by_hand (id int)"))
        conn.commit()
    code, _, err = run(capsys, "upgrade", "--schema", "ecommerce")
    assert code == 0 and "migrate: warning: ecommerce: drift found before migrating" in err
    assert run(capsys, "verify", "--schema", "ecommerce")[0] == 1

    code, out, _ = run(capsys, "baseline", "--schema", "ecommerce")

    assert code == 0
    assert "accepted: relation by_hand exists but no migration created it" in out
    assert run(capsys, "verify", "--schema", "ecommerce")[0] == 0
    assert workspace.audit()[-2].operation == "baseline"  # then verify's own row


def _state(workspace: Workspace, capsys, state: str) -> None:
    """Put dev in ``state``: fresh, at_head, behind, ahead (a revision applied whose file
    is gone, as after switching branches), or by_hand (a change made outside migrations)."""
    import sqlalchemy as sa

    if state == "fresh":
        return
    if state == "behind":
        assert main(["upgrade", "--to", "da35ac5b8dce"]) == 0
    else:
        assert main(["upgrade"]) == 0
    if state == "ahead":
        workspace.add_revision(
            "analytics",
            "2024_06_01_0900-a4ead0000001_gone.py",
            simple_revision("a4ead0000001", ANALYTICS_HEAD, "soon_gone").replace(
                'schema="ecommerce"', 'schema="analytics"'
            ),
        )
        assert main(["upgrade"]) == 0
        (workspace.versions / "analytics" / "2024_06_01_0900-a4ead0000001_gone.py").unlink()
    if state == "by_hand":
        with workspace.connect() as conn:
            conn.execute(sa.text("ALTER TABLE ecommerce.orders ADD COLUMN by_hand int"))
            conn.commit()
    capsys.readouterr()


@pytest.mark.parametrize("state", ["fresh", "at_head", "behind", "ahead", "by_hand"])
def test_every_command_twice_in_every_state_answers_without_a_crash(
    workspace: Workspace, capsys, state: str
):
    """Nothing to do is success; a state the command cannot serve is a clear line, exit 1
    or 2; never a traceback or an internal error."""
    _state(workspace, capsys, state)
    commands = [
        ["status"],
        ["plan"],
        ["lint"],
        ["verify"],
        ["audit"],
        ["upgrade"],
        ["downgrade", "--schema", "analytics", "--to", "-1"],
        ["baseline", "--schema", "ecommerce"],
    ]
    outcomes = {}
    for args in commands:
        for attempt in (1, 2):
            code, out, err = run(capsys, *args)
            assert "Traceback" not in out + err and "internal error" not in err, (args, err)
            assert code in (0, 1, 2), (args, code, err)
            if code == 2:
                assert err.count("\n") == 1, (args, err)  # bad input: one line
            if code == 1:
                assert "FAIL" in out or err.startswith(("dev: ", "migrate: failed")), (args, err)
            outcomes[(args[0], attempt)] = code
    assert outcomes[("status", 1)] == outcomes[("status", 2)] == 0
    assert outcomes[("audit", 2)] == 0
    if state != "ahead":
        assert outcomes[("upgrade", 2)] == 0  # the second upgrade has nothing to do
    else:
        # the schemas' places cannot be told: nothing moves them, status says why
        for command in ("upgrade", "plan", "lint", "baseline", "downgrade"):
            assert outcomes[(command, 1)] == 2, command
        code, out, err = run(capsys, "status")
        assert code == 0 and "a4ead0000001, which no revision file" in err
        code, out, err = run(capsys, "verify", "--schema", "analytics")
        assert (
            code == 1 and "a4ead0000001 is applied in the database but its file is missing" in out
        )


def test_upgrade_after_the_first_environment_goes_as_far_as_the_one_before_verified(
    workspace: Workspace, capsys
):
    assert run(capsys, "upgrade", "--schema", "ecommerce")[0] == 0
    assert run(capsys, "verify", "--schema", "ecommerce")[0] == 0
    workspace.add_revision(
        "ecommerce",
        "2024_06_01_0900-e1e000000001_newer.py",
        simple_revision("e1e000000001", ECOMMERCE_HEAD, "newer"),
    )
    assert run(capsys, "upgrade", "--schema", "ecommerce")[0] == 0  # dev: not verified yet

    code, out, _ = run(capsys, "upgrade", "--env", "staging", "--schema", "ecommerce")

    assert code == 0, out
    assert "staging/ecommerce" in out and ECOMMERCE_HEAD in out
    assert workspace.version_heads("staging") == {ECOMMERCE_HEAD}  # not e1e000000001
    code, out, _ = run(capsys, "verify", "--env", "staging", "--schema", "ecommerce")
    assert code == 0, out  # where promotion stops is where staging should be
    # Twice: nothing more to do until dev verifies the newer revision.
    assert run(capsys, "upgrade", "--env", "staging", "--schema", "ecommerce")[0] == 0
    assert workspace.version_heads("staging") == {ECOMMERCE_HEAD}

    assert run(capsys, "verify", "--schema", "ecommerce")[0] == 0
    assert run(capsys, "upgrade", "--env", "staging", "--schema", "ecommerce")[0] == 0
    assert workspace.version_heads("staging") == {"e1e000000001"}

    # An explicit --to is the operator's own call, said when it goes past promotion.
    code, out, err = run(capsys, "upgrade", "--env", "prod", "--to", "e1e000000001")
    assert code == 0 and out.startswith("prod: ")
    assert (
        "migrate: warning: prod/ecommerce: --to e1e000000001 goes past what staging is at "
        "and verified (" in err
    ), err
    assert "e1e000000001" in workspace.version_heads("prod")
    assert run(capsys, "verify", "--env", "staging", "--schema", "ecommerce")[0] == 0
    code, _out, err = run(capsys, "upgrade", "--env", "prod", "--to", "e1e000000001")
    assert code == 0 and "warning" not in err  # verified in staging now, and nothing to do


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
        ("postgresql://postgres:Wr0ng S3cr@t@127.0.0.1:5432/dev", "write an @ in the password"),
    ],
)
def test_a_url_whose_target_is_ambiguous_is_refused(
    workspace: Workspace, capsys, monkeypatch, url, said
):
    monkeypatch.setenv("DEV_DATABASE_URL", url)
    code, out, err = run(capsys, "upgrade")
    assert code == 2 and out == "" and err.count("\n") == 1 and said in err
    assert "Wr0ng" not in err and "t@127" not in err


def test_a_reader_that_goes_away_does_not_fail_the_migration(workspace: Workspace):
    """`migrate upgrade | head -1`: the progress lines lose their reader mid-run."""
    migrate = Path(sys.executable).parent / "migrate"
    done = workspace.run("bash", "-c", f"{migrate} upgrade | head -1")
    assert done.returncode == 0, done.stderr
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert all(row.success for row in workspace.audit())


@pytest.mark.parametrize(
    "bad_id", ["base", "head", "", "it's", "x" * 40, "a-b.c", "a,b", "ümlaut1"]
)
def test_a_revision_id_alembic_cannot_use_is_one_line_before_anything_runs(
    workspace: Workspace, capsys, bad_id: str
):
    workspace.add_revision(
        "ecommerce",
        "2024_06_01_0900-bad_id.py",
        revision_file("placeholder", ECOMMERCE_HEAD, "    pass").replace(
            'revision = "placeholder"', f"revision = {bad_id!r}"
        ),
    )
    for command in ("status", "upgrade"):
        code, out, err = run(capsys, command)
        assert code == 2 and out == "" and err.count("\n") == 1, (command, err)
        assert "is not usable" in err
    assert workspace.version_heads() == set()


def test_a_merge_taken_back_leaves_two_revisions_standing_and_says_so(workspace: Workspace, capsys):
    """Found by an adversarial session: after the merge was reverted, status showed one of
    the two revisions standing and `downgrade --to -1` did nothing, exit 0."""
    for rev in ("f1a000000001", "f1a000000002"):
        workspace.add_revision(
            "ecommerce",
            f"2024_06_01_0900-{rev}_fork.py",
            simple_revision(rev, ECOMMERCE_HEAD, f"t_{rev}"),
        )
    merge = revision_file("f1a00000000m", None, "    pass").replace(
        "down_revision = None", 'down_revision = ("f1a000000001", "f1a000000002")'
    )
    workspace.add_revision("ecommerce", "2024_06_02_0900-f1a00000000m_merge.py", merge)
    assert run(capsys, "upgrade", "--schema", "ecommerce")[0] == 0
    assert run(capsys, "downgrade", "--schema", "ecommerce", "--to", "-1")[0] == 0
    assert workspace.version_heads() == {"f1a000000001", "f1a000000002"}

    code, _out, err = run(capsys, "status")
    assert code == 0
    assert "ecommerce stands at 2 revisions (f1a000000001, f1a000000002)" in err
    for to in ("-1", "f1a000000001"):
        for _ in (1, 2):
            code, _out, err = run(capsys, "downgrade", "--schema", "ecommerce", "--to", to)
            assert code == 2 and err.count("\n") == 1, err
            assert "stands at 2 revisions" in err and "below all of them" in err
    assert workspace.version_heads() == {"f1a000000001", "f1a000000002"}  # unchanged

    assert run(capsys, "downgrade", "--schema", "ecommerce", "--to", ECOMMERCE_HEAD)[0] == 0
    assert workspace.version_heads() == {ECOMMERCE_HEAD}
    assert run(capsys, "upgrade", "--schema", "ecommerce")[0] == 0
    assert workspace.version_heads() == {"f1a00000000m"}


def test_a_version_table_of_its_own_is_read_by_status_verify_and_plain_alembic(
    workspace: Workspace, capsys
):
    """Found by an adversarial session: env.py's version_table was used by upgrades while
    status and verify read alembic_version. migrate.toml [version] names it for both."""
    env_py = workspace.root / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "runtime.run_migrations(context, target_metadata=target_metadata)",
            'runtime.run_migrations(context, target_metadata=target_metadata, version_table="v")',
        )
    )
    # env.py names a table migrate.toml does not: one line, exit 2, nothing changed
    code, _out, err = run(capsys, "upgrade")
    assert code == 2 and err.count("\n") == 1, err
    assert "env.py configures version_table='v'" in err and "[version] table" in err
    assert workspace.version_heads() == set()

    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text() + '\n[version]\ntable = "v"\n')
    for _ in (1, 2):
        assert run(capsys, "upgrade")[0] == 0
    assert workspace.scalar("SELECT to_regclass('public.alembic_version') IS NULL")
    assert {r[0] for r in workspace.rows("SELECT version_num FROM v")} == {
        ECOMMERCE_HEAD,
        ANALYTICS_HEAD,
    }
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0 and all(s["at_head"] for s in json.loads(out)["schemas"])
    assert run(capsys, "verify")[0] == 0
    current = workspace.run("alembic", "current")
    assert current.returncode == 0 and f"{ECOMMERCE_HEAD} (head)" in current.stdout


def test_init_carries_env_pys_version_table_into_migrate_toml(tmp_path, monkeypatch, capsys):
    from alembic import command
    from alembic.config import Config

    from dagster_alembic.settings import load_settings

    root = tmp_path / "team"
    root.mkdir()
    monkeypatch.chdir(root)
    command.init(Config(str(root / "alembic.ini")), str(root / "migrations"))
    env_py = root / "migrations" / "env.py"
    text = env_py.read_text()
    assert text.count("target_metadata=target_metadata") == 2  # offline and online
    env_py.write_text(
        text.replace(
            "connection=connection, target_metadata=target_metadata",
            'connection=connection, target_metadata=target_metadata, version_table="teams_v"',
        )
    )
    capsys.readouterr()
    for _ in (1, 2):  # a second run changes nothing
        assert main(["init"]) == 0
    settings = load_settings(root / "alembic.ini")
    assert (settings.version_table, settings.version_table_schema) == ("teams_v", None)
    assert (root / "migrate.toml").read_text().count("[version]") == 1
    assert 'version_table="teams_v"' in env_py.read_text()  # carried, and consistent


def test_a_revision_that_fails_to_import_is_named_after_the_target_line(
    workspace: Workspace, capsys
):
    """Found by an adversarial session: a pending module raising at import gave no target
    line and no revision, only 'upgrade failed: RuntimeError: ...'."""
    workspace.add_revision(
        "ecommerce",
        "2024_06_01_0900-b00000000001_boom.py",
        simple_revision("b00000000001", ECOMMERCE_HEAD, "boom")
        + '\nraise RuntimeError("boom at import")\n',
    )
    code, out, err = run(capsys, "upgrade", "--schema", "ecommerce")
    assert code == 1, err
    assert out.splitlines()[0].startswith(f"dev: {display_url(workspace.urls['dev'])}")
    assert err.startswith(
        "dev: upgrade failed: revision b00000000001 (2024_06_01_0900-b00000000001_boom.py): "
        "RuntimeError: boom at import"
    ), err
    assert "b00000000001" not in workspace.version_heads()


def test_a_helper_module_in_a_versions_folder_is_a_broken_revision_file(
    workspace: Workspace, capsys
):
    """Alembic loads every *.py there and fails on one with no revision id: so does every
    migrate command, in one line, before anything runs (was: status fine, upgrade exit 1)."""
    (workspace.versions / "analytics" / "_helpers.py").write_text("X = 1\n")
    for command in ("status", "upgrade", "verify"):
        code, _out, err = run(capsys, command)
        assert code == 2 and err.count("\n") == 1 and "_helpers.py" in err, (command, err)
    assert workspace.version_heads() == set()


def test_a_computed_revision_id_is_named_as_such(workspace: Workspace, capsys):
    body = simple_revision("c0000000000d", ECOMMERCE_HEAD, "computed").replace(
        'revision = "c0000000000d"', 'revision = "c0000000" + "000d"'
    )
    assert 'revision = "c0000000" + "000d"' in body
    workspace.add_revision("ecommerce", "2024_06_01_0900-c0000000000d_computed.py", body)
    code, _out, err = run(capsys, "status")
    assert code == 2 and "is not a plain string" in err and err.count("\n") == 1, err


def test_init_updates_an_env_py_wired_by_the_release_named_orchestration(
    workspace: Workspace, capsys
):
    env_py = workspace.root / "migrations" / "env.py"
    text = env_py.read_text()
    assert "from dagster_alembic import runtime" in text
    env_py.write_text(text.replace("from dagster_alembic", "from orchestration"))
    assert main(["init"]) == 0
    assert env_py.read_text() == text
    capsys.readouterr()
    assert main(["init"]) == 0  # twice changes nothing
    assert env_py.read_text() == text
