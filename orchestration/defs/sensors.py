"""revision_files_sensor: new or edited revision files start a run that migrates dev."""

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_alembic import scan
from dagster_alembic.defs.specs import ProjectSpecs
from dagster_alembic.settings import History, ProjectSettings

# The cursor is bounded whatever the number of files: per schema, a digest of its files'
# stat and one of their content, and at most a few broken files (named until fixed). Each
# file's stat, sha256 and reading live in the scan cache's folder (scan.folder_states), and
# the content a digest stood for in a file named by it (scan.folder_contents).
CURSOR_VERSION = 2
_BROKEN_SHOWN = 3  # broken files named per schema; the rest are counted
_ERROR_CHARS = 160


def _parse_cursor(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    data = json.loads(text)
    if isinstance(data, dict) and data.get("v") == CURSOR_VERSION:
        return data
    # A cursor of the first format ({relative path: [mtime, size, sha256]}): its content
    # per schema is known, its stat digests are not (every folder is read once).
    return {"v": CURSOR_VERSION, "schemas": {}, "legacy": data}


def _legacy_contents(root: Path, history: History, legacy: dict) -> dict[str, str]:
    folder = os.path.relpath(history.folder, root)
    return {
        os.path.basename(key): value[2]
        for key, value in legacy.items()
        if os.path.dirname(key) == folder and isinstance(value, list) and len(value) == 3
    }


def _state_dir(state_root: str | None, history: History) -> str | None:
    if state_root is None:
        return None
    folder = hashlib.sha256(str(history.folder).encode()).hexdigest()[:16]
    return os.path.join(state_root, folder)


def changed_files(
    root: Path,
    histories: Sequence[History],
    previous: dict[str, Any] | None,
    state_root: str | None = None,
) -> tuple[dict[str, Any], list[tuple[str, scan.FileState]], dict[str, list]]:
    """The new cursor, (schema, file) of each file new or changed since ``previous``, and
    the broken files of each schema (name, error), as many as the cursor names.
    ``state_root``: where each folder's file index and past contents are kept (default:
    the folder's __pycache__, written like bytecode)."""
    schemas: dict[str, Any] = {}
    changed: list[tuple[str, scan.FileState]] = []
    broken: dict[str, list] = {}
    old_schemas = (previous or {}).get("schemas", {})
    legacy = (previous or {}).get("legacy")
    for history in histories:
        schema = history.schema
        state = _state_dir(state_root, history)
        stat, _ = scan.stat_digest(history)
        old = old_schemas.get(schema)
        if old is not None and old.get("stat") == stat:
            schemas[schema] = old  # quiet: no file read, broken ones still named
            if old.get("broken"):
                broken[schema] = old["broken"]
            continue
        states = scan.folder_states(history, state)
        checksums = {name: s.checksum for name, s in states.items()}
        content = scan.content_digest(checksums)
        bad = sorted((s.name, (s.error or "")[:_ERROR_CHARS]) for s in states.values() if s.error)
        if not bad and len(heads := _heads(states.values())) > 1:
            # a run could only fail: named like a broken file, until they are merged
            bad = [("", f"{len(heads)} heads ({', '.join(heads)}): merge them (alembic merge)")]
        entry: dict[str, Any] = {"stat": stat, "content": content, "files": len(states)}
        if bad:
            entry["broken"] = [list(b) for b in bad[:_BROKEN_SHOWN]] + (
                [[f"... and {len(bad) - _BROKEN_SHOWN} more", ""]]
                if len(bad) > _BROKEN_SHOWN
                else []
            )
            broken[schema] = entry["broken"]
        schemas[schema] = entry
        if previous is None:
            scan.save_folder_contents(history, content, checksums, state)
            continue
        if legacy is not None:
            before: dict[str, str] | None = _legacy_contents(root, history, legacy)
        elif old is None:
            before = {}  # a schema new since the last tick: every file is new
        elif old.get("content") == content:
            continue  # touched, not changed
        else:
            before = scan.folder_contents(history, old["content"], state)
        scan.save_folder_contents(history, content, checksums, state)
        for name, file in sorted(states.items()):
            if before is None or before.get(name) != file.checksum:
                changed.append((schema, file))
    return {"v": CURSOR_VERSION, "schemas": schemas}, changed, broken


def _heads(states: Iterable[scan.FileState]) -> list[str]:
    """The folder's revisions that no other names as its down_revision (from the file
    index: nothing read)."""
    files = [f for f in states if f.revision]
    below = {d for f in files for d in f.down_revisions}
    return sorted(str(f.revision) for f in files if f.revision not in below)


def build_revision_files_sensor(
    settings: ProjectSettings,
    specs: ProjectSpecs,
    environment: str,
    name: str = "revision_files_sensor",
) -> dg.SensorDefinition:
    histories = settings.histories
    root = settings.root
    keys = {h.schema: specs.key(environment, h.schema) for h in histories}
    folders = {h.schema: str(h.folder) for h in histories}

    @dg.sensor(
        name=name,
        target=dg.AssetSelection.assets(*keys.values()),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Watches {', '.join(os.path.relpath(h.folder, root) for h in histories)} for new "
            "or edited "
            f"revision files (stat and sha256, nothing imported) and materializes the "
            f"{environment} asset of each schema they belong to."
        ),
    )
    def revision_files_sensor(
        context: dg.SensorEvaluationContext,
    ) -> dg.SensorResult | dg.SkipReason:
        previous = _parse_cursor(context.cursor)
        # Dagster's own storage keeps what the sensor knows of each file: writable where
        # the project's tree is not, and kept when bytecode is not (the Docker image).
        state_root = os.path.join(context.instance.storage_directory(), "migrate-sensor")
        current, changed, broken = changed_files(root, histories, previous, state_root)
        cursor = json.dumps(current, separators=(",", ":"))
        # A broken file is named at every tick until it is fixed: the sensor's own page is
        # where a person watching this sensor looks (a log line scrolls away).
        broken_note = "; ".join(
            f"revision file {os.path.relpath(os.path.join(folders[schema], name), root)} is "
            f"broken ({error}): {schema} is not migrated until it is fixed"
            if error and name
            else f"{schema} has {error}: it is not migrated until then"
            if error
            else f"{schema}: {name}"
            for schema, files in sorted(broken.items())
            for name, error in files
        )
        if previous is None:
            files = sum(entry["files"] for entry in current["schemas"].values())
            context.update_cursor(cursor)
            note = f"; {broken_note}" if broken_note else ""
            return dg.SkipReason(f"first tick: {files} revision files recorded{note}")
        by_schema: dict[str, list[scan.FileState]] = {}
        for schema, state in changed:
            if state.error is None:
                by_schema.setdefault(schema, []).append(state)
        requests = [
            dg.RunRequest(
                run_key=f"{schema}:"
                + ",".join(sorted(f"{f.revision}@{f.checksum[:16]}" for f in files)),
                asset_selection=[keys[schema]],
                tags={
                    "migrate/trigger": "revision_files_sensor",
                    "migrate/revisions": ",".join(sorted(str(f.revision) for f in files)),
                },
            )
            for schema, files in sorted(by_schema.items())
            if schema not in broken
        ]
        if broken_note:
            context.log.warning(broken_note)
        if not requests:
            context.update_cursor(cursor)
            return dg.SkipReason(broken_note or "no new or changed revision files")
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return revision_files_sensor
