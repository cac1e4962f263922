"""The fast path (orchestration/fastpath.py) gives the full path's answers, in every state.

Each test runs a command both ways on the same database: the fast path alone
(cli._fast, which either answers or declines) and the full path (the fast path off), and
compares exit code, stdout and stderr. Where the fast path must not answer (something to
do, something to refuse, the lock held, the audit table to create), it declines.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    ANALYTICS_HEAD,
    ECOMMERCE_HEAD,
    Workspace,
    revision_file,
    simple_revision,
)

from dagster_alembic import cli, engine, fastpath, sessions, targets, urls
from dagster_alembic.cli import main
from dagster_alembic.settings import load_settings


@pytest.fixture(autouse=True)
def bytecode_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Caches are written as Python writes bytecode; a sandbox may have turned that off.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def fast(*args: str) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    answer = cli._fast(list(args), out, err)
    return answer.code, out.getvalue(), err.getvalue()


def slow(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str):
    with monkeypatch.context() as patch:
        patch.setattr(fastpath, "cached", lambda explicit: None)
        code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tcp_server(server_url) -> None:
    """The fast path answers for a server reached over TCP; the embedded server is reached
    by its socket, where it always takes the full path (test_embedded_server_declines)."""
    if not server_url.host or server_url.host.startswith("/") or "host" in server_url.query:
        pytest.skip("the fast path answers over TCP only; this server is reached by socket")


def test_embedded_server_declines(workspace, capsys, monkeypatch):
    """Whatever the test server, a socket URL (the embedded server's) takes the full path."""
    warm(capsys)
    monkeypatch.setenv("DEV_DATABASE_URL", "postgresql://postgres@/dev?host=/tmp")
    assert fast("status") == (None, "", "")  # handed to the full path, nothing printed


def warm(capsys: pytest.CaptureFixture) -> None:
    """Runs that leave the caches a first deploy leaves: settings, the audit probe."""
    for _ in range(3):
        assert main(["upgrade"]) == 0
    capsys.readouterr()


def same(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    answered = fast(*args)
    assert answered[0] is not None, f"the fast path declined {args}"
    assert answered == slow(capsys, monkeypatch, *args)
    return answered  # type: ignore[return-value]


def declines(*args: str) -> None:
    code, out, err = fast(*args)
    assert (code, out, err) == (None, "", "")


def audit_rows(workspace: Workspace) -> int:
    return len(workspace.audit())


@pytest.mark.usefixtures("tcp_server")
def test_at_head_status_and_upgrade_are_the_full_paths_answers(workspace, capsys, monkeypatch):
    warm(capsys)
    rows = audit_rows(workspace)
    code, out, _ = same(capsys, monkeypatch, "upgrade")
    assert code == 0 and out.splitlines()[1:] == ["dev: nothing to do"]
    assert out.splitlines()[0] == f"dev: {urls.display_url(workspace.urls['dev'])}"
    code, out, _ = same(capsys, monkeypatch, "upgrade", "--json")
    assert json.loads(out)["steps"] == [] and json.loads(out)["target"]
    same(capsys, monkeypatch, "upgrade", "--schema", "analytics")
    same(capsys, monkeypatch, "upgrade", "--to", "head", "--env", "dev")
    code, out, _ = same(capsys, monkeypatch, "status")
    assert "yes" in out
    same(capsys, monkeypatch, "status", "--json", "--schema", "ecommerce")
    assert audit_rows(workspace) == rows  # a no-op upgrade writes no row, either way


@pytest.mark.usefixtures("tcp_server")
def test_fresh_database(workspace, capsys, monkeypatch):
    warm(capsys)
    fresh = workspace.urls["staging"]  # never migrated
    monkeypatch.setenv("DEV_DATABASE_URL", fresh.render_as_string(False))
    _, out, _ = same(capsys, monkeypatch, "status")
    assert "pending" in out and "yes" not in out
    same(capsys, monkeypatch, "status", "--json")
    declines("upgrade")  # everything to do


@pytest.mark.usefixtures("tcp_server")
def test_behind_the_files(workspace, capsys, monkeypatch):
    warm(capsys)
    workspace.add_revision(
        "ecommerce",
        "2024_09_01_0900-new000000001_x.py",
        simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
    )
    _, out, _ = same(capsys, monkeypatch, "status")
    assert "1 pending" in out
    declines("upgrade")
    declines("upgrade", "--schema", "ecommerce")
    same(capsys, monkeypatch, "upgrade", "--schema", "analytics")  # not ecommerce's new one
    assert main(["upgrade"]) == 0
    capsys.readouterr()
    assert "new000000001" in workspace.version_heads()


@pytest.mark.usefixtures("tcp_server")
def test_ahead_of_the_files(workspace, capsys, monkeypatch):
    path = workspace.add_revision(
        "ecommerce",
        "2024_09_01_0900-new000000001_x.py",
        simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
    )
    warm(capsys)
    path.unlink()
    code, _, err = same(capsys, monkeypatch, "status")
    assert code == 0 and "new000000001" in err and "migrate: warning" in err
    declines("upgrade")
    assert main(["upgrade"]) == 2  # refused by the full path, as before


@pytest.mark.usefixtures("tcp_server")
def test_an_edited_applied_file_is_still_caught(workspace, capsys, monkeypatch):
    warm(capsys)
    applied = next((workspace.versions / "ecommerce").glob("*.py"))
    applied.write_text(applied.read_text() + "\n# edited after it was applied\n")
    for _ in range(2):  # twice in a row: no cache hides it the second time
        same(capsys, monkeypatch, "status")
        same(capsys, monkeypatch, "upgrade")  # upgrade never compared checksums: neither
        code, out, _ = slow(capsys, monkeypatch, "verify")
        assert code == 1 and "was edited after it was applied" in out


@pytest.mark.usefixtures("tcp_server")
def test_broken_file_unknown_schema_and_environment_go_the_full_way(workspace, capsys):
    warm(capsys)
    declines("status", "--env", "nowhere")
    declines("status", "--schema", "nowhere")
    declines("upgrade", "--env", "staging")  # promotion: the full path's
    declines("upgrade", "--to", ECOMMERCE_HEAD)
    declines("status", "--help")
    bad = workspace.add_revision("ecommerce", "zz_broken.py", "def upgrade(:\n")
    assert fast("status") == (None, "", "")  # handed to the full path, nothing printed
    assert main(["status"]) == 2
    bad.unlink()
    assert fast("status")[0] == 0


@pytest.mark.usefixtures("tcp_server")
def test_lock_held_and_missing_audit_table_decline(workspace, capsys, monkeypatch):
    warm(capsys)
    with workspace.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": sessions.LOCK_KEY})
        declines("upgrade")
        assert fast("status")[0] == 0  # status takes no lock, as engine.status
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": sessions.LOCK_KEY})
        holder.commit()
    with workspace.connect() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version_history"))
        conn.commit()
    declines("upgrade")  # the full path creates it on a no-op upgrade: it does here
    assert main(["upgrade"]) == 0
    assert workspace.scalar("SELECT to_regclass('public.alembic_version_history') IS NOT NULL")


def test_settings_are_reread_when_a_file_changes(workspace, capsys):
    warm(capsys)
    assert fastpath.cached(None) is not None
    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text() + "\n# changed\n")
    assert fastpath.cached(None) is None
    assert main(["status"]) == 0
    cache = fastpath.cached(None)
    assert cache is not None and cache.settings == load_settings(None)


def test_unreachable_database_same_message(workspace, capsys, monkeypatch):
    warm(capsys)
    monkeypatch.setenv("DEV_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    code, out, err = fast("status")
    assert code == 2 and "cannot connect to the dev database" in err
    assert (code, out, err) == slow(capsys, monkeypatch, "status")


def test_a_database_error_after_connecting_is_the_full_paths_one_line(
    workspace, capsys, monkeypatch
):
    """Found by an adversarial session: a lock timeout or a missing privilege on the
    version table was a raw traceback on the fast path."""
    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text().replace('lock_timeout = "5s"', 'lock_timeout = "300ms"', 1))
    warm(capsys)
    with workspace.connect() as holder:
        holder.execute(sa.text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
        for command in ("status", "upgrade"):
            declines(command)
            code, out, err = run_main(capsys, command)
            assert code == 1 and "Traceback" not in out + err, err
            assert "lock timeout" in err and err.count("\n") <= 3, err
        holder.rollback()


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("tcp_server")
def test_no_alembic_or_sqlalchemy_import(workspace, capsys):
    warm(capsys)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for command in ("status", "upgrade", "verify"):
        script = (
            "import sys\nfrom dagster_alembic.cli import main\n"
            f"code = main([{command!r}])\n"
            "heavy = [m for m in ('sqlalchemy', 'alembic') if m in sys.modules]\n"
            "assert code == 0 and not heavy, (code, heavy)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=workspace.root, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u@127.0.0.1:5432/db",
        "postgresql://u@127.0.0.1:05432/db",  # shown as 5432 by the full path: declined
        "postgresql://u@127.0.0.1:0/db",  # the default port for libpq: declined
        "postgres://u:secret@localhost/db",
        "postgresql+psycopg2://u:p%40ss%25w@h.example:6543/db_1",
        "postgresql://u:secret@h/db?sslmode=require",  # a query: the full path's
        "postgresql://secret:secret@h/db",  # the password is also the user's name
        "postgresql:///db?host=/tmp",
        "mysql://u@h/db",
    ],
)
def test_target_is_read_as_the_full_path_reads_it(raw, workspace, monkeypatch):
    monkeypatch.setenv("DEV_DATABASE_URL", raw)
    settings = load_settings(None)
    shown = fastpath.target(settings, "dev")
    if shown is None:
        return  # declined: the full path reads it
    url = targets.database_url(settings, "dev")
    assert shown.display == urls.display_url(url)
    expected = {"host": url.host, "dbname": url.database, "user": url.username}
    expected |= {"port": url.port} if url.port else {}
    expected |= {"password": url.password} if url.password is not None else {}
    assert {
        k: v for k, v in shown.connect.items() if k in expected or k in ("port", "password")
    } == expected


def test_copies_of_engine_values_stay_equal(workspace):
    settings = load_settings(None)
    env = settings.environment("dev")
    assert fastpath.LOCK_KEY == sessions.LOCK_KEY
    assert fastpath.ERROR_LIMIT == sessions._ERROR_LIMIT
    assert fastpath.session_options(env.lock_timeout, env.statement_timeout) == (
        sessions.session_options(env)
    )
    assert fastpath.application_name("dev") == sessions.application_name("dev")
    from dagster_alembic import launcher

    assert fastpath.STORAGE_ENV == launcher.STORAGE_ENV


def test_the_settings_cache_sits_beside_alembic_ini(workspace, capsys):
    warm(capsys)
    assert fastpath._cache_path(workspace.ini).parent == workspace.root / "__pycache__"
    assert Path(fastpath._cache_path(workspace.ini)).is_file()


def test_verify_runs_without_alembic_and_answers_as_with_load_settings(
    workspace, capsys, monkeypatch
):
    """verify reads the settings load_settings returned last time (no Alembic import for
    checking alembic.ini) and the heads in SQL: the same answer as from load_settings."""
    warm(capsys)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    script = (
        "import sys\nfrom dagster_alembic.cli import main\n"
        "code = main(['verify', '--schema', 'ecommerce'])\n"
        "assert code == 0 and 'alembic' not in sys.modules, (code, sorted(sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=workspace.root, env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "PASS dev/ecommerce" in done.stdout.decode()

    def findings(out: str) -> list:
        return [(s["schema"], s["current"], s["findings"]) for s in json.loads(out)["schemas"]]

    code, out, _ = main(["verify", "--json"]), *capsys.readouterr()
    slow_code, slow_out, _ = slow(capsys, monkeypatch, "verify", "--json")
    assert code == slow_code == 0 and findings(out) == findings(slow_out)
    # A file edited since: the cached settings still see it (files are read every run).
    path = workspace.versions / "ecommerce"
    edited = sorted(path.glob("*.py"))[0]
    edited.write_text(edited.read_text() + "\n# edited\n")
    assert main(["verify"]) == 1
    assert "was edited after it was applied" in capsys.readouterr().out


def test_heads_are_read_as_alembic_reads_them(workspace):
    """engine._db_heads (SQL, no Alembic) against MigrationContext.get_current_heads, on
    no version table, an empty one, one head and two."""
    from alembic.runtime.migration import MigrationContext

    def both() -> tuple[tuple[str, ...], tuple[str, ...]]:
        with workspace.connect() as conn:
            ours = engine._db_heads(conn, workspace.project().settings)
            return ours, MigrationContext.configure(conn).get_current_heads()

    assert both() == ((), ())
    assert workspace.run("migrate", "upgrade", "--schema", "ecommerce").returncode == 0
    ours, theirs = both()
    assert ours == theirs and len(ours) == 1
    assert workspace.run("migrate", "upgrade").returncode == 0
    ours, theirs = both()
    assert ours == theirs and len(ours) >= 1
    with workspace.connect() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('aaa'), ('bbb')"))
        conn.commit()
    assert both() == (("aaa", "bbb"), ("aaa", "bbb"))
    with workspace.connect() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
        conn.commit()
    assert both() == ((), ())


# --- verify: the full path's checks and audit row, on psycopg2 alone ------------------------

_TIMING = ("id", "changed_at", "duration_ms")


def _row(row: sa.Row) -> dict:
    return {k: v for k, v in row._asdict().items() if k not in _TIMING}


def _answer(text: str) -> str:
    """A verify answer without what differs between any two runs (time, row ids)."""
    if not text.lstrip().startswith("{"):
        return text
    data = json.loads(text)
    for schema in data["schemas"]:
        schema.pop("duration_ms"), schema.pop("audit_id")
    return json.dumps(data)


def same_verify(workspace, capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """verify both ways: the same exit code and output, and the same audit rows written
    (one per schema, each path)."""
    before = len(workspace.audit())
    code, out, err = fast("verify", *args)
    assert code is not None, f"the fast path declined verify {args}"
    fast_rows = workspace.audit()[before:]
    slow_code, slow_out, slow_err = slow(capsys, monkeypatch, "verify", *args)
    slow_rows = workspace.audit()[before + len(fast_rows) :]
    assert (code, _answer(out), err) == (slow_code, _answer(slow_out), slow_err)
    assert fast_rows and [_row(r) for r in fast_rows] == [_row(r) for r in slow_rows]
    return code, out


@pytest.mark.usefixtures("tcp_server")
def test_verify_in_every_state_is_the_full_paths_answer(workspace, capsys, monkeypatch):
    warm(capsys)
    for _ in range(2):  # at head, twice in a row
        code, out = same_verify(workspace, capsys, monkeypatch)
        assert code == 0 and "PASS dev/ecommerce" in out and "PASS dev/analytics" in out
    same_verify(workspace, capsys, monkeypatch, "--json")
    same_verify(workspace, capsys, monkeypatch, "--schema", "analytics")
    # changed by hand: drift, an INVALID index is not needed to see a column
    with workspace.connect() as conn:
        conn.execute(sa.text("ALTER TABLE ecommerce.customers ADD COLUMN nickname text"))
        conn.commit()
    code, out = same_verify(workspace, capsys, monkeypatch)
    assert code == 1 and "customers.nickname exists but no migration created it" in out
    same_verify(workspace, capsys, monkeypatch, "--json", "--schema", "ecommerce")
    with workspace.connect() as conn:
        conn.execute(sa.text("ALTER TABLE ecommerce.customers DROP COLUMN nickname"))
        conn.commit()
    # behind the files
    new = workspace.add_revision(
        "ecommerce",
        "2024_09_01_0900-new000000001_x.py",
        simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
    )
    code, out = same_verify(workspace, capsys, monkeypatch)
    assert code == 1 and "1 revision(s) pending" in out
    # ahead of the files: applied, then its file removed
    assert main(["upgrade"]) == 0
    capsys.readouterr()
    new.unlink()
    code, out = same_verify(workspace, capsys, monkeypatch)
    assert code == 1 and "new000000001 is applied in the database but its file is missing" in out
    new.write_text(simple_revision("new000000001", ECOMMERCE_HEAD, "t1"))
    # an applied file edited: caught on both paths, every time
    new.write_text(new.read_text() + "\n# edited after it was applied\n")
    for _ in range(2):
        code, out = same_verify(workspace, capsys, monkeypatch)
        assert code == 1 and "was edited after it was applied" in out
    capsys.readouterr()


@pytest.mark.usefixtures("tcp_server")
def test_verify_declines_where_the_full_path_must_verify(workspace, capsys, monkeypatch):
    warm(capsys)
    declines("verify", "--env", "staging")  # promotion: what dev verified
    # a table we cannot use, or none: ensure_table's work; then the fast path answers
    with workspace.connect() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version_history"))
        conn.commit()
    declines("verify")
    assert main(["verify"]) == 0
    assert fast("verify")[0] == 0
    assert len(workspace.audit()) == 4  # two schemas, once each way; nothing else
    # a column named so that the output would need masking: declined and rolled back
    with workspace.connect() as conn:
        conn.execute(sa.text("ALTER TABLE ecommerce.customers ADD COLUMN password text"))
        conn.commit()
    before = len(workspace.audit())
    declines("verify")
    assert len(workspace.audit()) == before  # no row left behind by declining
    assert main(["verify"]) == 1 and "customers.password" in capsys.readouterr().out
    with workspace.connect() as conn:
        conn.execute(sa.text("ALTER TABLE ecommerce.customers DROP COLUMN password"))
        conn.commit()


@pytest.mark.usefixtures("tcp_server")
def test_verify_with_a_revision_hook_takes_the_full_path(workspace, capsys):
    warm(capsys)
    head = next(
        r for r in workspace.project().revisions("ecommerce") if r.revision == ECOMMERCE_HEAD
    )
    head.path.write_text(
        head.path.read_text() + "\n\ndef verify(connection):\n    return 'checked by hand'\n"
    )
    declines("verify", "--schema", "ecommerce")
    code, out, _ = run_main(capsys, "verify", "--schema", "ecommerce")
    assert code == 1 and "verify(): checked by hand" in out
    assert fast("verify", "--schema", "analytics")[0] == 0  # no hook there


def test_cached_settings_are_not_used_once_a_folder_load_settings_checked_is_gone(
    workspace, capsys
):
    """Found by an adversarial session: with script_location gone, the cached settings
    verified (exit 0, rows written) where load_settings says exit 2."""
    warm(capsys)
    assert fastpath.cached(None) is not None
    ini = workspace.ini.read_text()
    workspace.ini.write_text(
        ini.replace("script_location = %(here)s/migrations", "script_location = %(here)s/scripts")
        + "\nversion_locations = %(here)s/migrations/versions/ecommerce "
        "%(here)s/migrations/versions/analytics\n"
    )
    shutil.copytree(workspace.root / "migrations", workspace.root / "scripts")
    assert main(["status"]) == 0 and fastpath.cached(None) is not None
    capsys.readouterr()
    shutil.rmtree(workspace.root / "scripts")
    assert fastpath.cached(None) is None
    rows = len(workspace.audit())
    for command in ("status", "verify"):
        declines(command)
        code, _, err = run_main(capsys, command)
        assert code == 2 and "script_location" in err and "does not exist" in err, err
    assert len(workspace.audit()) == rows


def test_an_interrupted_verify_records_no_schema_on_either_path(workspace, capsys):
    """Rows are written once every schema is checked: the full path wrote ecommerce's
    before analytics' hook was interrupted; the fast path wrote none."""
    warm(capsys)
    workspace.add_revision(
        "analytics",
        "2024_09_01_0900-hook00000001_x.py",
        revision_file("hook00000001", ANALYTICS_HEAD, "    pass")
        + "\n\ndef verify(connection):\n    raise KeyboardInterrupt\n",
    )
    assert main(["upgrade"]) == 0
    capsys.readouterr()
    rows = len(workspace.audit())
    handler = signal.getsignal(signal.SIGINT)
    code, _, err = run_main(capsys, "verify")
    assert code == 130 and "interrupted" in err
    assert len(workspace.audit()) == rows
    # main() from Python gives the caller its Ctrl-C back (it ignores further ones while it
    # finishes): else every process the caller starts afterwards would ignore Ctrl-C
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.usefixtures("tcp_server")
def test_a_password_in_a_json_finding_is_never_printed(workspace, capsys, monkeypatch):
    """Found by an adversarial session: JSON escaped the password's quote, and the fast
    path's check looked at the escaped text."""
    warm(capsys)
    url = workspace.urls["dev"].set(password='Tr0ub4dor"x')
    monkeypatch.setenv("DEV_DATABASE_URL", url.render_as_string(hide_password=False))
    with workspace.connect() as conn:
        conn.execute(sa.text('ALTER TABLE ecommerce.customers ADD COLUMN "Tr0ub4dor""x" int'))
        conn.commit()
    rows = len(workspace.audit())
    declines("verify", "--json")
    declines("verify")
    assert len(workspace.audit()) == rows
    code, out, _ = run_main(capsys, "verify", "--json")
    assert code == 1 and "Tr0ub4dor" not in out and "customers.***" in out


def test_masking_is_looked_for_as_redact_looks_for_it():
    shown = fastpath.Target("dev", "postgresql+psycopg2://u@h/db", {}, ("s3cret",))
    assert fastpath.needs_masking("relation pa\u017f\u017fword=x", shown)  # long s folds to s
    assert fastpath.needs_masking({"message": ['a "s3cret" b']}, shown)
    assert not fastpath.needs_masking({"message": ["nothing here"], "id": 7}, shown)


@pytest.mark.usefixtures("tcp_server")
def test_a_timeout_in_verify_is_the_full_paths_failure_without_waiting_twice(
    workspace, capsys, monkeypatch
):
    """Found by an adversarial session: the fast path timed out, declined, and the full
    path waited for the same lock again."""
    toml = workspace.root / "migrate.toml"
    toml.write_text(toml.read_text().replace('lock_timeout = "5s"', 'lock_timeout = "300ms"', 1))
    warm(capsys)
    assert main(["verify"]) == 0
    capsys.readouterr()
    rows = len(workspace.audit())
    with workspace.connect() as holder:
        holder.execute(sa.text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
        code, out, err = fast("verify")
        assert code == 1 and out == "" and err.startswith("migrate: failed: dev: LockNotAvailable")
        assert (code, out, err) == slow(capsys, monkeypatch, "verify")
        holder.rollback()
    assert len(workspace.audit()) == rows


@pytest.mark.usefixtures("tcp_server")
def test_a_user_who_cannot_write_the_audit_table_gets_one_failure_line(
    workspace, capsys, monkeypatch
):
    """Both paths: `migrate: failed: dev: InsufficientPrivilege: ...`, exit 1, no row (the
    full path's row insert runs on the driver's cursor: it was an internal error)."""
    warm(capsys)
    assert main(["verify"]) == 0
    capsys.readouterr()
    role = f"ro_{workspace.urls['dev'].database}"[:60]
    with workspace.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'GRANT USAGE ON SCHEMA ecommerce, analytics TO "{role}"'))
        conn.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
        conn.commit()
    try:
        url = workspace.urls["dev"].set(username=role, password=None)
        monkeypatch.setenv("DEV_DATABASE_URL", url.render_as_string(hide_password=False))
        rows = len(workspace.audit())
        code, out, err = fast("verify")
        assert code == 1 and out == "", err
        assert err.startswith("migrate: failed: dev: InsufficientPrivilege: permission denied")
        assert (code, out, err) == slow(capsys, monkeypatch, "verify")
        assert len(workspace.audit()) == rows
    finally:
        with workspace.connect() as conn:
            conn.execute(sa.text(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"'))
            conn.execute(sa.text(f'REVOKE ALL ON SCHEMA ecommerce, analytics FROM "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
            conn.commit()


@pytest.mark.usefixtures("tcp_server")
def test_an_answer_that_cannot_be_written_is_an_internal_error_not_a_traceback_alone(
    workspace, capsys
):
    warm(capsys)
    with workspace.connect() as conn:
        conn.execute(sa.text('CREATE TABLE ecommerce."\u65e5\u672c" (a int)'))
        conn.commit()
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii")
    errors = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", ascii_out)
        patch.setattr(sys, "stderr", errors)
        code = main(["verify"])
    assert code == 1
    assert errors.getvalue().startswith("migrate: internal error: UnicodeEncodeError")


def test_hooks_bound_otherwise_than_by_def_are_called_or_refused(workspace, capsys):
    """Found by an adversarial session: `verify = lambda c: ...` and `async def verify`
    were skipped in silence."""
    warm(capsys)
    workspace.add_revision(
        "analytics",
        "2024_09_01_0900-hook00000001_x.py",
        revision_file("hook00000001", ANALYTICS_HEAD, "    pass")
        + "\n\nverify = lambda connection: 'said by a lambda'\n",
    )
    workspace.add_revision(
        "analytics",
        "2024_09_01_0901-hook00000002_x.py",
        revision_file("hook00000002", "hook00000001", "    pass")
        + "\n\nasync def verify(connection):\n    return True\n",
    )
    workspace.add_revision(
        "analytics",
        "2024_09_01_0902-hook00000003_x.py",
        revision_file("hook00000003", "hook00000002", "    pass")
        + "\n\nverify = other = lambda connection: 'said by a chained assignment'\n",
    )
    workspace.add_revision(
        "analytics",
        "2024_09_01_0903-hook00000004_x.py",
        revision_file("hook00000004", "hook00000003", "    pass")
        + "\n\nif True:\n    def verify(connection):\n        return 'said inside an if'\n",
    )
    workspace.add_revision(
        "analytics",
        "2024_09_01_0904-hook00000005_x.py",
        revision_file("hook00000005", "hook00000004", "    pass") + "\n\nimport json as verify\n",
    )
    assert main(["upgrade"]) == 0
    capsys.readouterr()
    declines("verify")
    code, out, _ = run_main(capsys, "verify")
    assert code == 1
    assert "hook00000001 verify(): said by a lambda" in out
    assert "hook00000002 verify(): must be a plain function taking the connection, not async" in out
    assert "hook00000003 verify(): said by a chained assignment" in out
    assert "hook00000004 verify(): said inside an if" in out
    assert (
        "hook00000005 verify(): must be a plain function taking the connection, not module" in out
    )


def test_the_settings_cache_is_the_working_directorys(workspace, capsys, tmp_path, monkeypatch):
    """Found by an adversarial session: Alembic reads a relative script_location against
    the working directory; the cache answered for another directory's files."""
    warm(capsys)
    assert fastpath.cached(str(workspace.ini)) is not None
    monkeypatch.chdir(tmp_path)
    assert fastpath.cached(str(workspace.ini)) is None
