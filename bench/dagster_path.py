"""The Dagster path of the everyday deploy (#15), one whole process, timed in parts.

Run by bench/run.py (``--deploy``) in the bench project's folder, with DAGSTER_HOME a
folder whose dagster.yaml keeps runs, events and schedules in SQLite (a real instance, as
`dagster dev` makes one). ``prime``: the sensor's first tick (its cursor written to
``cursor.txt``, its per-file index to the instance's storage), as a running deployment has
it. ``run``: one new revision file has landed; the revision_files_sensor tick, the run it
requests (the dev asset of the schema and its checks, executed in this process as a run
worker executes it) and the materialization read back from the instance. Prints one JSON
object of seconds since process start at each mark to ``marks.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
marks: dict[str, float] = {}


def mark(name: str) -> None:
    marks[name] = round(time.perf_counter() - STARTED, 4)


import dagster as dg  # noqa: E402

mark("import dagster")
from dagster_alembic.definitions import defs  # noqa: E402

definitions = defs()
sensor = definitions.resolve_sensor_def("revision_files_sensor")
job = definitions.resolve_implicit_global_asset_job_def()
mark("definitions")

with dg.DagsterInstance.get() as instance:
    mark("instance")
    saved = Path("cursor.txt")
    cursor = (saved.read_text() or None) if saved.exists() else None
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions)
    result = sensor(context)
    mark("sensor tick")
    if sys.argv[1] == "prime":
        assert isinstance(result, dg.SkipReason), result
        saved.write_text(context.cursor or "")
        sys.exit(0)
    assert isinstance(result, dg.SensorResult) and len(result.run_requests or []) == 1, result
    request = (result.run_requests or [])[0]
    run = job.execute_in_process(
        instance=instance,
        asset_selection=list(request.asset_selection or []),
        tags=request.tags,
    )
    mark("run")
    assert run.success
    key = (request.asset_selection or [])[0]
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.run_id == run.run_id
    checks = [e for e in run.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert checks, "no asset check ran"
    mark("materialization read")
    saved.write_text(context.cursor or "")
Path("marks.json").write_text(json.dumps(marks))
