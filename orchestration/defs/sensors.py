"""revision_files_sensor: new or edited revision files start a run that migrates dev."""

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from orchestration import scan
from orchestration.defs.specs import ProjectSpecs
from orchestration.revisions import file_checksum
from orchestration.settings import History, ProjectSettings

# cursor: {relative path: [mtime_ns, size, sha256]}; unchanged stat means unchanged file,
# so a quiet tick reads no file at all.
Cursor = dict[str, list]


def changed_files(
    root: Path, histories: Sequence[History], previous: Cursor
) -> tuple[Cursor, list]:
    """The new cursor, and (schema, path, sha256) of files new or changed since ``previous``."""
    current: Cursor = {}
    changed = []
    for schema, path, st in scan.list_files(histories):
        key = os.path.relpath(path, root)
        old = previous.get(key)
        if old and old[0] == st.st_mtime_ns and old[1] == st.st_size:
            current[key] = old
            continue
        sha = file_checksum(path)
        current[key] = [st.st_mtime_ns, st.st_size, sha]
        if not old or old[2] != sha:
            changed.append((schema, path, sha))
    return current, changed


def build_revision_files_sensor(
    settings: ProjectSettings,
    specs: ProjectSpecs,
    environment: str,
    name: str = "revision_files_sensor",
) -> dg.SensorDefinition:
    histories = settings.histories
    root = settings.root
    keys = {h.schema: specs.key(environment, h.schema) for h in histories}

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
        previous: Cursor | None = json.loads(context.cursor) if context.cursor else None
        current, changed = changed_files(root, histories, previous or {})
        if previous is None:
            context.update_cursor(json.dumps(current))
            return dg.SkipReason(f"first tick: {len(current)} revision files recorded")
        if not changed:
            context.update_cursor(json.dumps(current))
            return dg.SkipReason("no new or changed revision files")

        by_schema: dict[str, list[scan.RevisionFile]] = defaultdict(list)
        broken: list[scan.RevisionFile] = []
        for schema, path, _ in changed:
            parsed = scan.read_revision_file(schema, path)
            (broken if parsed.error else by_schema[schema]).append(parsed)
        for bad in broken:
            context.log.warning(f"revision file {bad.path} is broken: {bad.error}")
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
            if schema not in {b.schema for b in broken}
        ]
        if not requests:
            bad = broken[0]
            # The broken file's hash is in the cursor: it is reported once, and fixing it
            # (new content, new hash) triggers a run.
            context.update_cursor(json.dumps(current))
            return dg.SkipReason(
                f"revision file {os.path.relpath(bad.path, root)} is broken ({bad.error}): "
                f"{bad.schema} is not migrated until it is fixed"
            )
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(current))

    return revision_files_sensor
