"""The Dagster UI as a person uses it, in a real browser (Debian's chromium, headless).

Screenshots of each step go to test-artifacts/browser/. Without chromium or playwright
the test skips with the reason, except in CI (CI=true), where it must run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ECOMMERCE_HEAD, ENV_URL_VARS, REPO, Workspace, running_dagster

from orchestration import embedded
from orchestration.settings import load_settings

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
        f"{base}/locations/orchestration.definitions/jobs/migrate/playground",
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
    page.get_by_text("verify", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("Passed", exact=True).first.wait_for(timeout=30_000)
    assert page.get_by_text("blocking").count() >= 1
    shot("5-verify-check")


def _dev_url(settings) -> str:
    from orchestration.targets import database_url

    return database_url(settings, "dev").render_as_string(hide_password=False)
