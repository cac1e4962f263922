"""environment_sync: nightly, bring environments up to what verified before them."""

from typing import Any

import dagster as dg

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_environment_sync(job: Any, cron: str, name: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=name,
        cron_schedule=cron,
        target=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            'Upgrades each environment whose policy is promote = "auto" behind the verify '
            "of the environment before it, and runs verify everywhere (prod included). "
            "Skips while another run is active."
        ),
    )
    def environment_sync(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        active = context.instance.get_run_records(filters=dg.RunsFilter(statuses=ACTIVE), limit=1)
        if active:
            run = active[0].dagster_run
            return dg.SkipReason(f"run {run.run_id} ({run.job_name}) is active: not syncing now")
        return dg.RunRequest(tags={"migrate/trigger": "environment_sync"})

    return environment_sync
