"""`migrate ui` as a user starts it: dg dev on PostgreSQL storage, no supersession warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Databases, Workspace, _free_port

# Starts Dagster processes or a browser: `pytest -m "not slow"` leaves it out.
pytestmark = pytest.mark.slow


def test_migrate_ui_starts_dg_dev_on_postgresql_storage(
    workspace: Workspace, databases: Databases, tmp_path: Path
):
    storage = databases.create("dagster").render_as_string(hide_password=False)
    port = _free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "DAGSTER_POSTGRES_URL": storage, "DAGSTER_HOME": str(tmp_path / "home")}
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "migrate"), "ui", "--", "-p", str(port)],
        cwd=workspace.root,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert ui.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(30)
    output = log.read_text()
    assert "running: dg dev -w" in output
    assert "SupersessionWarning" not in output
    # Dagster's own storage is the PostgreSQL database given, not a temporary SQLite
    instance = (tmp_path / "home" / "dagster.yaml").read_text()
    assert "DAGSTER_POSTGRES_URL" in instance
    engine = sa.create_engine(storage, poolclass=sa.NullPool)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert {"runs", "event_logs"} <= tables
