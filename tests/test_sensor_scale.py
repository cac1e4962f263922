"""revision_files_sensor at scale: a cursor of bounded size, a broken file named at every
tick until it is fixed, no revision module imported. Timings live in bench/."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace, simple_revision

from dagster_alembic.definitions import build_definitions


@pytest.fixture(autouse=True)
def bytecode_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    sensor = defs.resolve_sensor_def("revision_files_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = sensor(context)
    if isinstance(result, dg.SensorResult) and result.cursor is not None:
        return result, result.cursor
    return result, context.cursor


def add_chain(workspace: Workspace, count: int, start: str = ECOMMERCE_HEAD) -> None:
    down = start
    for i in range(count):
        rev = f"bulk{i:08d}"
        workspace.add_revision(
            "ecommerce", f"9{i:06d}_{rev}.py", simple_revision(rev, down, f"b{i}")
        )
        down = rev


def test_cursor_size_does_not_grow_with_files(workspace: Workspace):
    with dg.instance_for_test() as instance:
        defs = build_definitions(str(workspace.ini))
        _, small = tick(defs, instance, None)
        add_chain(workspace, 400)
        _, large = tick(build_definitions(str(workspace.ini)), instance, None)
        assert small and large
        # The same keys and digests, whatever the number of files (a count's digits aside).
        assert abs(len(large) - len(small)) <= 4
        assert len(large) < 1000
        assert json.loads(large)["schemas"]["ecommerce"]["files"] == 405


def test_new_edited_and_quiet_ticks(workspace: Workspace):
    with dg.instance_for_test() as instance:
        defs = build_definitions(str(workspace.ini))
        first, cursor = tick(defs, instance, None)
        assert isinstance(first, dg.SkipReason) and "first tick: 7 revision files" in (
            first.skip_message or ""
        )
        quiet, cursor = tick(defs, instance, cursor)
        assert isinstance(quiet, dg.SkipReason) and "no new" in (quiet.skip_message or "")

        path = workspace.add_revision(
            "ecommerce",
            "2024_09_01_0900-new000000001_x.py",
            simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
        )
        new, cursor = tick(defs, instance, cursor)
        (request,) = new.run_requests  # type: ignore[union-attr]
        assert request.run_key.startswith("ecommerce:new000000001@")
        assert request.tags["migrate/revisions"] == "new000000001"

        os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000))  # touched, same bytes
        touched, cursor = tick(defs, instance, cursor)
        assert isinstance(touched, dg.SkipReason)

        path.write_text(path.read_text() + "\n# reviewed\n")
        edited, cursor = tick(defs, instance, cursor)
        (again,) = edited.run_requests  # type: ignore[union-attr]
        assert again.run_key != request.run_key and "new000000001" in again.run_key


def test_a_broken_file_stays_visible_until_it_is_fixed(workspace: Workspace):
    with dg.instance_for_test() as instance:
        defs = build_definitions(str(workspace.ini))
        _, cursor = tick(defs, instance, None)
        bad = workspace.add_revision(
            "analytics", "2024_09_01_0900-broken000001_x.py", "def upgrade(:\n"
        )
        for _ in range(3):  # every tick, not only the first after it appeared
            result, cursor = tick(defs, instance, cursor)
            assert isinstance(result, dg.SkipReason)
            assert "broken000001_x.py" in (result.skip_message or "")
            assert "analytics is not migrated" in (result.skip_message or "")
        bad.write_text(simple_revision("broken000001", ANALYTICS_HEAD, "fixed"))
        fixed, cursor = tick(defs, instance, cursor)
        (request,) = fixed.run_requests  # type: ignore[union-attr]
        assert request.run_key.startswith("analytics:broken000001@")
        quiet, _ = tick(defs, instance, cursor)
        assert isinstance(quiet, dg.SkipReason) and "no new" in (quiet.skip_message or "")


def test_two_heads_start_no_run_and_stay_named_until_merged(workspace: Workspace):
    """A run for a schema with two heads could only fail: named at every tick instead."""
    with dg.instance_for_test() as instance:
        defs = build_definitions(str(workspace.ini))
        _, cursor = tick(defs, instance, None)
        for rev in ("fork00000001", "fork00000002"):
            workspace.add_revision(
                "ecommerce",
                f"2024_09_01_0900-{rev}_x.py",
                simple_revision(rev, ECOMMERCE_HEAD, rev),
            )
        for _ in range(2):
            result, cursor = tick(defs, instance, cursor)
            assert isinstance(result, dg.SkipReason), result
            assert "ecommerce has 2 heads (fork00000001, fork00000002)" in (
                result.skip_message or ""
            )
        merge = simple_revision("merge0000001", ECOMMERCE_HEAD, "merge").replace(
            f"down_revision = {ECOMMERCE_HEAD!r}",
            'down_revision = ("fork00000001", "fork00000002")',
        )
        assert "fork00000001" in merge
        workspace.add_revision("ecommerce", "2024_09_02_0900-merge0000001_m.py", merge)
        merged, cursor = tick(defs, instance, cursor)
        assert isinstance(merged, dg.SensorResult), merged
        (request,) = merged.run_requests  # type: ignore[union-attr]
        assert request.run_key.startswith("ecommerce:")


def test_a_cursor_of_the_first_format_still_names_what_changed(workspace: Workspace):
    root = workspace.root
    legacy = {}
    for path in sorted(workspace.versions.rglob("*.py")):
        st = path.stat()
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        legacy[os.path.relpath(path, root)] = [st.st_mtime_ns, st.st_size, sha]
    workspace.add_revision(
        "ecommerce",
        "2024_09_01_0900-new000000001_x.py",
        simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
    )
    with dg.instance_for_test() as instance:
        result, cursor = tick(build_definitions(str(workspace.ini)), instance, json.dumps(legacy))
        (request,) = result.run_requests  # type: ignore[union-attr]
        assert request.tags["migrate/revisions"] == "new000000001"
        assert json.loads(cursor)["v"] == 2


def test_lost_caches_mean_a_run_not_a_miss(workspace: Workspace):
    """With its state gone (Dagster's storage), the sensor cannot name the changed file:
    it runs the schema (listing its files) rather than miss a change."""
    with dg.instance_for_test() as instance:
        defs = build_definitions(str(workspace.ini))
        _, cursor = tick(defs, instance, None)
        workspace.add_revision(
            "ecommerce",
            "2024_09_01_0900-new000000001_x.py",
            simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
        )
        shutil.rmtree(Path(instance.storage_directory()) / "migrate-sensor")
        result, _ = tick(defs, instance, cursor)
        (request,) = result.run_requests  # type: ignore[union-attr]
        assert "new000000001" in request.tags["migrate/revisions"]
