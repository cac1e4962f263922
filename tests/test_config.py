"""Bad configuration is one line and exit 2, found before anything connects (issue 11, item 11).

Every case runs `migrate status` on a workspace whose databases are real and reachable:
without the check up front, the command would go on and connect, or crash with a traceback.
"""

from __future__ import annotations

import os
import re

import pytest
import sqlalchemy as sa
from conftest import Workspace

from dagster_alembic.cli import main
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import load_settings


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_exit_2(capsys: pytest.CaptureFixture, expected: str, *args: str) -> str:
    code, out, err = run(capsys, *(args or ("status",)))
    assert code == 2, out + err
    assert out == ""
    assert err.startswith("migrate: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    return err


# --- migrate.toml --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[lock]\nwait_timeout_seconds = nan", "[lock] wait_timeout_seconds: must be a finite"),
        ("[lock]\nwait_timeout_seconds = inf", "[lock] wait_timeout_seconds: must be a finite"),
        ("[lock]\nwait_timeout_seconds = -1", "[lock] wait_timeout_seconds: must be a finite"),
        ('[lock]\nwait_timeout_seconds = "soon"', "wait_timeout_seconds: must be a finite"),
        ("[lock]\nwait_timeout_seconds = true", "wait_timeout_seconds: must be a finite"),
        ('[lock]\nwait_timeout = "5s"', "[lock]: unknown key 'wait_timeout'"),
        ("[locks]\nwait_timeout_seconds = 5", "unknown section [locks]"),
        ("lock = 5", "[lock] must be a table"),
        ("[audit]\nschema = 5", "[audit] schema: must be a string"),
        ('[audit]\nschemaa = "public"', "[audit]: unknown key 'schemaa'"),
        ('[environments.dev]\nlock_timeout = "5 parsecs"', "[environments.dev] lock_timeout"),
        ("[environments.dev]\nlock_timeout = 5", "[environments.dev] lock_timeout"),
        ('[environments.dev]\nstatement_timeout = "-1s"', "statement_timeout: '-1s' is not"),
        ('[environments.dev]\nstatement_timeout = "99999999min"', "out of range"),
        ('[environments.dev]\nlock_timout = "5s"', "[environments.dev]: unknown key 'lock_timout'"),
        ('[environments.dev]\npromote = "sometimes"', "promote: must be 'auto' or 'manual'"),
        ("[environments.dev]\nurl_env = 5", "[environments.dev] url_env: must be a string"),
        ('[environments.dev]\nurl_env = "dev url"', "url_env: 'dev url' is not a variable name"),
        ('[environments]\ndev = "postgresql://h/db"', "[environments.dev] must be a table"),
        ("[environments]", "[environments] is empty"),
        ('[environments.dev.fleet]\ndatabase = ["a"]', "[environments.dev.fleet]: unknown key"),
        ('[environments.dev.fleet]\ndatabases = "a"', "fleet] databases: must be a list"),
        ("[environments.dev.fleet]\nquery = 5", "[environments.dev.fleet] query: must be a"),
    ],
)
def test_a_bad_migrate_toml_is_one_line_and_exit_2(
    workspace: Workspace, capsys, toml: str, expected: str
):
    (workspace.root / "migrate.toml").write_text(toml + "\n")
    err = assert_one_line_exit_2(capsys, expected)
    assert "migrate.toml" in err  # the file is named
    assert workspace.version_heads() == set()


def test_a_migrate_config_naming_a_missing_file_is_an_error(workspace: Workspace, capsys):
    ini = workspace.ini.read_text()
    workspace.ini.write_text(ini.replace("%(here)s/migrate.toml", "%(here)s/settings/nope.toml"))
    assert_one_line_exit_2(capsys, "migrate_config names")
    assert "nope.toml" in run(capsys, "status")[2]


def test_a_migrate_toml_that_is_not_utf8_is_an_error(workspace: Workspace, capsys):
    (workspace.root / "migrate.toml").write_bytes(b'[audit]\nschema = "caf\xe9"\n')
    assert_one_line_exit_2(capsys, "migrate.toml: not UTF-8")


def test_timeouts_are_checked_as_postgresql_reads_them(server_url):
    """Every duration parse_duration accepts, PostgreSQL accepts, with the same value;
    what PostgreSQL refuses (or would round to 0, turning the timeout off) is refused."""
    from dagster_alembic.settings import parse_duration

    accepted = ["5s", "500ms", "10min", "1h", "2d", "0", "250", "1.5s", " 3 s ", "24d",
                "1000us", "2147483647"]  # fmt: skip
    refused = ["7 days", "5S", "-1s", "5 parsecs", "", "3000000000", "25d", "2147483648",
               "100us", "0.4"]  # fmt: skip
    engine = sa.create_engine(server_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        set_it = sa.text("SELECT set_config('lock_timeout', :v, true)")
        show_ms = sa.text("SELECT setting::bigint FROM pg_settings WHERE name = 'lock_timeout'")
        for value in accepted:
            conn.execute(set_it, {"v": value})
            assert parse_duration(value) == conn.scalar(show_ms), value
        for value in refused:
            with pytest.raises(ValueError):
                parse_duration(value)
            if value not in ("100us", "0.4"):
                with pytest.raises(sa.exc.DBAPIError), conn.begin_nested():
                    conn.execute(set_it, {"v": value})
        conn.rollback()
    engine.dispose()


def test_the_project_files_pass_and_give_their_values(workspace: Workspace):
    settings = load_settings(workspace.ini)
    assert settings.environment_names == ("dev", "staging", "prod")
    assert settings.environment("prod").lock_timeout == "3s"
    assert settings.lock_wait_timeout_seconds == 60.0


# --- alembic.ini ---------------------------------------------------------------------------


def _edit_ini(workspace: Workspace, pattern: str, replacement: str) -> None:
    text = workspace.ini.read_text()
    edited = re.sub(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert edited != text
    workspace.ini.write_text(edited)


def test_an_alembic_ini_without_an_alembic_section_is_an_error(workspace: Workspace, capsys):
    _edit_ini(workspace, r"^\[alembic\]$", "[alembics]")
    assert_one_line_exit_2(capsys, "has no [alembic] section")


def test_a_script_location_that_does_not_exist_is_an_error(workspace: Workspace, capsys):
    _edit_ini(workspace, r"^script_location = .*$", "script_location = %(here)s/migrationz")
    assert_one_line_exit_2(capsys, "script_location")


def test_an_inline_comment_alembic_rejects_is_named(workspace: Workspace, capsys):
    _edit_ini(workspace, r"^script_location = .*$", "script_location = migrations  # the env")
    err = assert_one_line_exit_2(capsys, "inline comment")
    assert "script_location" in err


def test_an_inline_comment_in_version_locations_is_named(workspace: Workspace, capsys):
    _edit_ini(workspace, r"(versions/analytics)$", r"\1  # reporting")
    err = assert_one_line_exit_2(capsys, "inline comment")
    assert "version_locations" in err


def test_an_alembic_ini_that_is_not_utf8_is_an_error(workspace: Workspace, capsys):
    workspace.ini.write_bytes(workspace.ini.read_bytes() + b"\n# caf\xe9\n")
    assert_one_line_exit_2(capsys, "not UTF-8")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_alembic_ini_is_an_error(workspace: Workspace, capsys):
    workspace.ini.chmod(0)
    try:
        assert_one_line_exit_2(capsys, "cannot read")
    finally:
        workspace.ini.chmod(0o644)


def test_load_settings_raises_configuration_error_for_the_dagster_path_too(workspace: Workspace):
    (workspace.root / "migrate.toml").write_text("[lock]\nwait_timeout_seconds = nan\n")
    with pytest.raises(ConfigurationError, match="wait_timeout_seconds"):
        load_settings(workspace.ini)


def test_the_console_script_says_one_line_for_bad_configuration(workspace: Workspace):
    (workspace.root / "migrate.toml").write_text('[lock]\nwait_timeout_seconds = "soon"\n')
    done = workspace.run("migrate", "upgrade")
    assert done.returncode == 2
    assert done.stderr.startswith("migrate: error: ") and done.stderr.count("\n") == 1
    assert done.stdout == "" and workspace.version_heads() == set()


@pytest.mark.parametrize(
    ("option", "value"), [("prepend_sys_path", "%"), ("path_separator", "bogus")]
)
def test_an_alembic_ini_value_alembic_cannot_read_is_one_line(
    workspace, capsys, option: str, value: str
):
    from dagster_alembic.cli import main

    text = workspace.ini.read_text()
    lines = [line for line in text.splitlines() if not line.startswith(f"{option} =")]
    at = lines.index("[alembic]") + 1
    lines.insert(at, f"{option} = {value}")
    workspace.ini.write_text("\n".join(lines) + "\n")

    code = main(["status"])
    out, err = capsys.readouterr()

    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err
