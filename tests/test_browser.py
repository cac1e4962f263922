"""The Dagster UI as a person uses it, in a real browser (Debian's chromium, headless).

Screenshots of each step go to test-artifacts/browser/. Without chromium or playwright
the test skips with the reason, except in CI (CI=true), where it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    ECOMMERCE_HEAD,
    ENV_URL_VARS,
    REPO,
    Workspace,
    running_dagster,
    simple_revision,
)

from dagster_alembic import embedded
from dagster_alembic.settings import load_settings

# Starts Dagster processes or a browser: `pytest -m "not slow"` leaves it out.
pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the browser test (.ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture
def browser():
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        _missing("no chromium on this machine (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def embedded_ui(workspace: Workspace, tmp_path, monkeypatch):
    """webserver + daemon on the embedded default: no URL set, storage on the embedded server."""
    for var in (*ENV_URL_VARS, "DAGSTER_POSTGRES_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(embedded.DATA_DIR_ENV, str(tmp_path / "pgdata"))
    settings = load_settings(workspace.ini)
    try:
        with running_dagster(settings, tmp_path) as port:
            yield f"http://127.0.0.1:{port}", settings
    finally:
        embedded.stop_server(settings.root)


def _dismiss_dialogs(page) -> None:
    """Close what Dagster lays over a page on its own (its newsletter dialog, a "what's
    new" popover) and wait until no backdrop takes the clicks meant for the page."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()
    page.keyboard.press("Escape")
    backdrops = page.locator(".bp5-overlay-backdrop")
    for index in range(backdrops.count()):
        backdrops.nth(index).wait_for(state="hidden", timeout=10_000)


def test_a_person_launches_migrate_and_reads_the_result(browser, embedded_ui):
    base, settings = embedded_ui
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})

    def shot(name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    # 1. the promotion path: staging/ecommerce between dev/ecommerce and prod/ecommerce
    page.goto(f"{base}/assets/staging/ecommerce?view=lineage", wait_until="networkidle")
    skip = page.get_by_role("button", name="Skip")  # first-visit newsletter dialog
    if skip.count():
        skip.click()
    for group in ("dev", "staging", "prod"):
        page.get_by_text(group, exact=True).first.wait_for(timeout=30_000)
    assert page.get_by_text("ecommerce", exact=True).count() >= 3
    shot("1-asset-graph")

    # 2. the migrate job's Launchpad: no config typed, click the launch button
    page.goto(
        f"{base}/locations/dagster_alembic.definitions/jobs/migrate/playground",
        wait_until="networkidle",
    )
    page.get_by_text("No errors").wait_for(timeout=30_000)
    shot("2-launchpad")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/**", timeout=30_000)
    run_id = page.url.rstrip("/").split("/runs/")[1].split("?")[0]

    # 3. the run page shows success
    page.get_by_text("Success", exact=True).first.wait_for(timeout=180_000)
    page.get_by_text("RUN_SUCCESS").first.wait_for(timeout=30_000)
    shot("3-run-success")

    # 3b. the audit timeline attached to the run: a picture, not only text
    row = page.locator("tr", has_text="audit_timeline").last
    row.get_by_text("[Show Markdown]").click()
    picture = page.locator("img[alt='audit timeline']")
    picture.wait_for(timeout=30_000)
    assert picture.evaluate("img => img.naturalWidth") > 300
    shot("3b-audit-timeline")
    page.keyboard.press("Escape")

    # the run really migrated the embedded dev database, under that run id
    dev = sa.create_engine(
        sa.engine.make_url(os.environ.get("DEV_DATABASE_URL") or _dev_url(settings)),
        poolclass=sa.NullPool,
    )
    with dev.connect() as conn:
        run_rows = conn.scalar(
            sa.text("SELECT count(*) FROM alembic_version_history WHERE run_id = :r"), {"r": run_id}
        )
    dev.dispose()
    assert run_rows == 9  # 7 migrations and 2 verify rows

    # 4. dev/ecommerce: materialization metadata (revisions applied, SQL)
    page.goto(f"{base}/assets/dev/ecommerce", wait_until="networkidle")
    for text in ("revisions_applied", "sql", "current_revision", "audit_row_ids"):
        page.get_by_text(text, exact=True).first.wait_for(timeout=30_000)
    assert page.get_by_text(ECOMMERCE_HEAD).count() >= 1
    assert page.get_by_text("PostgreSQL schema").count() >= 1  # the description
    shot("4-asset-metadata")

    # 5. its verify check passed
    page.goto(f"{base}/assets/dev/ecommerce?view=checks", wait_until="networkidle")
    # the checks list is alphabetical (lint, verify): open verify's own page
    page.get_by_text("verify", exact=True).first.click()
    try:
        page.get_by_text("Passed", exact=True).first.wait_for(timeout=30_000)
    except Exception:
        shot("5-debug")
        raise
    assert page.get_by_text("blocking").count() >= 1
    shot("5-verify-check")


def _dev_url(settings) -> str:
    from dagster_alembic.targets import database_url

    return database_url(settings, "dev").render_as_string(hide_password=False)


def test_revision_state_is_visible_true_and_actionable(browser, embedded_ui, workspace):
    """Issue 14 in a browser: a new file shows the dev asset as changed before any run; a
    CLI upgrade shows on the asset; a failed verify's finding is on the run page without a
    click; the rollback Launchpad, reached from the asset page, is filled from choices."""
    from dagster_graphql import DagsterGraphQLClient

    from dagster_alembic import engine
    from dagster_alembic.revisions import MigrationProject

    base, settings = embedded_ui
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    client = DagsterGraphQLClient("127.0.0.1", port_number=int(base.rsplit(":", 1)[1]))

    def shot(name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def graphql(query: str, variables: dict) -> dict:
        """Dagster's GraphQL API over HTTP (the Python client has no call for sensors)."""
        request = urllib.request.Request(
            f"{base}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]

    def wait_run(run_id: str) -> str:
        deadline = time.monotonic() + 240
        status = client.get_run_status(run_id).value
        while status not in ("SUCCESS", "FAILURE", "CANCELED"):
            assert time.monotonic() < deadline, status
            time.sleep(1)
            status = client.get_run_status(run_id).value
        return status

    assert wait_run(client.submit_job_execution("migrate")) == "SUCCESS"

    # 1. a new revision file: after a reload, dev/ecommerce shows its code version changed.
    # The revision_files_sensor would migrate it within 30 s: stopped, to see the state first.
    found = graphql(
        "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { id } } }",
        {
            "s": {
                "repositoryLocationName": "dagster_alembic.definitions",
                "repositoryName": "__repository__",
                "sensorName": "revision_files_sensor",
            }
        },
    )
    graphql(
        "mutation($id: String) { stopSensor(id: $id) { __typename } }",
        {"id": found["sensorOrError"]["id"]},
    )
    workspace.add_revision(
        "ecommerce",
        "2024_03_02_0900-b0000000000a_wishlists.py",
        simple_revision("b0000000000a", ECOMMERCE_HEAD, "wishlists"),
    )
    client.reload_repository_location("dagster_alembic.definitions")
    page.goto(f"{base}/assets/dev/ecommerce", wait_until="networkidle")
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.click()
    try:
        page.get_by_text("Unsynced").first.wait_for(timeout=60_000)
    except Exception:
        shot("6-debug")
        raise
    assert page.get_by_text("b0000000000a").count() >= 1  # the description, reloaded
    shot("6-new-revision-file-unsynced")

    # 2. a CLI upgrade of staging (the engine, no Dagster run) shows on the staging asset
    project = MigrationProject(load_settings(workspace.ini))
    assert engine.upgrade(project, "staging", to=ECOMMERCE_HEAD).ok
    deadline = time.monotonic() + 200
    while True:
        page.goto(f"{base}/assets/staging/ecommerce?view=events", wait_until="networkidle")
        observed = f"staging/ecommerce is at {ECOMMERCE_HEAD} (observed in the database)"
        if page.get_by_text(observed).count():
            break
        assert time.monotonic() < deadline, "revision_observer never reported staging"
        time.sleep(10)
    # the newest observation, its metadata; a Dagster popover (a "what's new" video) may
    # lie over the page: close it first
    page.keyboard.press("Escape")
    page.get_by_text(observed).first.click(force=True)
    shot("7-cli-upgrade-observed")

    # 3. the rollback Launchpad from the asset page's link, filled from choices
    page.goto(f"{base}/assets/dev/analytics", wait_until="networkidle")
    _dismiss_dialogs(page)  # a Dagster dialog's backdrop once took this click (CI)
    page.get_by_role("link", name="Roll dev/analytics back").first.click()
    page.get_by_text("No errors").wait_for(timeout=60_000)
    editor = page.locator(".CodeMirror").first
    text = editor.inner_text()
    assert "schema_name: analytics" in text and 'to: "-1"' in text
    shot("8-rollback-launchpad")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/**", timeout=60_000)
    rollback_id = page.url.rstrip("/").split("/runs/")[1].split("?")[0]
    assert wait_run(rollback_id) == "SUCCESS"
    page.get_by_text("RUN_SUCCESS").first.wait_for(timeout=60_000)
    shot("9-rollback-succeeded")

    # 4. drift in dev: the migrate run fails, its finding readable on the run page
    dev = sa.create_engine(sa.engine.make_url(_dev_url(settings)), poolclass=sa.NullPool)
    with dev.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE ecommerce.by_hand (id int)")
        conn.commit()
    dev.dispose()
    failed = client.submit_job_execution("migrate")
    assert wait_run(failed) == "FAILURE"
    page.goto(f"{base}/runs/{failed}", wait_until="networkidle")
    page.get_by_text("verify failed for dev/ecommerce").first.wait_for(timeout=60_000)
    assert page.get_by_text("by_hand").count() >= 1
    shot("10-verify-finding-on-the-run-page")
