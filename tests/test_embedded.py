"""The embedded default: no URL set, the project starts and reuses its own PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import ENV_URL_VARS, Workspace

from dagster_alembic import embedded, engine, targets
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import load_settings


@pytest.fixture
def embedded_workspace(workspace: Workspace, tmp_path, monkeypatch):
    for var in ENV_URL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(embedded.DATA_DIR_ENV, str(tmp_path / "pgdata"))
    workspace.urls = {}  # subprocesses get no URL either
    yield workspace
    embedded.stop_server(workspace.root)


def _server_pid(url: sa.engine.URL) -> int:
    eng = sa.create_engine(url, poolclass=sa.NullPool)
    with eng.connect() as conn:
        pid = conn.scalar(
            sa.text("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        )
    eng.dispose()
    return int(pid)


def test_no_url_set_runs_on_the_embedded_server(embedded_workspace: Workspace, tmp_path):
    project = embedded_workspace.project()
    assert targets.uses_embedded(project.settings)

    result = engine.upgrade(project, "dev")

    assert result.ok, result.error
    dev = targets.database_url(project.settings, "dev")
    assert dev.query.get("host", "").startswith(str(tmp_path / "pgdata"))
    eng = sa.create_engine(dev, poolclass=sa.NullPool)
    with eng.connect() as conn:
        databases = set(conn.scalars(sa.text("SELECT datname FROM pg_database")))
        audit_rows = conn.scalar(sa.text("SELECT count(*) FROM alembic_version_history"))
    eng.dispose()
    assert {"dev", "staging", "prod", "dagster"} <= databases
    assert audit_rows == 7


def test_a_second_call_reuses_the_running_server(embedded_workspace: Workspace):
    settings = load_settings(embedded_workspace.ini)
    first = targets.database_url(settings, "dev")
    pid = _server_pid(first)
    # another process: the server outlived the first call and is found, not started again
    done = embedded_workspace.run("migrate", "upgrade", "--schema", "ecommerce", env_vars={})
    assert done.returncode == 0, done.stderr
    assert _server_pid(targets.database_url(settings, "staging")) == pid
    eng = sa.create_engine(first, poolclass=sa.NullPool)
    with eng.connect() as conn:  # the subprocess migrated the embedded dev database
        assert conn.scalar(sa.text("SELECT count(*) FROM alembic_version_history")) == 5
    eng.dispose()


def test_partial_url_configuration_is_an_error(embedded_workspace: Workspace, monkeypatch):
    monkeypatch.setenv("PROD_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/prod")
    settings = load_settings(embedded_workspace.ini)
    with pytest.raises(ConfigurationError, match="STAGING_DATABASE_URL is not set"):
        targets.database_url(settings, "staging")


def test_server_command_reports_and_stops_the_embedded_server(embedded_workspace: Workspace):
    settings = load_settings(embedded_workspace.ini)
    targets.database_url(settings, "dev")  # starts it
    status = embedded_workspace.run("migrate", "server", "status", env_vars={})
    assert status.returncode == 0, status.stderr
    assert ": running" in status.stdout and "used: no environment URL is set" in status.stdout
    stop = embedded_workspace.run("migrate", "server", "stop", env_vars={})
    assert stop.returncode == 0 and "stopped" in stop.stdout
    after = embedded_workspace.run("migrate", "server", "status", env_vars={})
    assert "not running" in after.stdout
