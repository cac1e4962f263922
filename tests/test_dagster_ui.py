"""The UI launch path for real: dagster-webserver and dagster-daemon on PostgreSQL storage."""

from __future__ import annotations

import time

import pytest
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace, running_dagster
from dagster_graphql import DagsterGraphQLClient

from dagster_alembic import launcher
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import load_settings

# Starts Dagster processes or a browser: `pytest -m "not slow"` leaves it out.
pytestmark = pytest.mark.slow


@pytest.fixture
def dagster_services(workspace: Workspace, databases, tmp_path, monkeypatch):
    """webserver + daemon for the workspace's project, Dagster storage in its own database."""
    storage = databases.create("dagster")
    # the spelling that breaks SQLAlchemy 2.1 + psycopg2; the launcher must normalize it
    monkeypatch.setenv(
        launcher.STORAGE_ENV, storage.set(drivername="postgresql").render_as_string(False)
    )
    settings = load_settings(workspace.ini)
    with running_dagster(settings, tmp_path) as port:
        yield port, tmp_path


def test_launching_migrate_with_no_config_succeeds(dagster_services, workspace: Workspace):
    port, logs = dagster_services
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)

    run_id = client.submit_job_execution("migrate")

    deadline = time.monotonic() + 180
    status = client.get_run_status(run_id)
    while status.value not in ("SUCCESS", "FAILURE", "CANCELED"):
        assert time.monotonic() < deadline, (logs / "daemon.log").read_text()[-3000:]
        time.sleep(1)
        status = client.get_run_status(run_id)
    assert status.value == "SUCCESS", (logs / "daemon.log").read_text()[-3000:]
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    rows = workspace.audit()
    assert len(rows) == 9 and {r.run_id for r in rows} == {run_id}


def test_storage_url_may_not_be_a_migrated_database(workspace: Workspace, monkeypatch):
    monkeypatch.setenv(launcher.STORAGE_ENV, workspace.urls["staging"].render_as_string(False))
    with pytest.raises(ConfigurationError, match="points at the staging database"):
        launcher.dagster_environment(load_settings(workspace.ini))


def test_storage_url_is_required_when_targets_are_configured(workspace: Workspace, monkeypatch):
    monkeypatch.delenv(launcher.STORAGE_ENV, raising=False)
    with pytest.raises(ConfigurationError, match="DAGSTER_POSTGRES_URL is not set"):
        launcher.dagster_environment(load_settings(workspace.ini))
