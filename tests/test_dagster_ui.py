"""The UI launch path for real: dagster-webserver and dagster-daemon on PostgreSQL storage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace
from dagster_graphql import DagsterGraphQLClient

from orchestration import launcher
from orchestration.errors import ConfigurationError
from orchestration.settings import load_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / args[0]), *args[1:]],
        env=env,
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def dagster_services(workspace: Workspace, databases, tmp_path, monkeypatch):
    """webserver + daemon for the workspace's project, Dagster storage in its own database."""
    storage = databases.create("dagster")
    # the spelling that breaks SQLAlchemy 2.1 + psycopg2; the launcher must normalize it
    monkeypatch.setenv(
        launcher.STORAGE_ENV, storage.set(drivername="postgresql").render_as_string(False)
    )
    settings = load_settings(workspace.ini)
    env = {**os.environ, **launcher.dagster_environment(settings)}
    env["DAGSTER_HOME"] = str(launcher.prepare_dagster_home(settings, tmp_path / "home"))
    port = _free_port()
    ws = str(workspace.root / "workspace.yaml")
    home = Path(env["DAGSTER_HOME"])
    web = _start(
        ["dagster-webserver", "-w", ws, "-h", "127.0.0.1", "-p", str(port)],
        env,
        home,
        tmp_path / "webserver.log",
    )
    daemon = _start(["dagster-daemon", "run", "-w", ws], env, home, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or web.poll() is not None:
                    pytest.fail((tmp_path / "webserver.log").read_text()[-3000:])
                time.sleep(0.5)
        yield port, tmp_path
    finally:
        _stop(web)
        _stop(daemon)


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
