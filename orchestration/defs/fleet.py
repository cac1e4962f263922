"""fleet_<env> jobs: every fleet target of an environment, fanned out over processes."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from orchestration import fleet
from orchestration.defs import metadata
from orchestration.defs.resource import MigrationResource
from orchestration.settings import EnvironmentSettings


def build_fleet_job(env: EnvironmentSettings) -> dg.JobDefinition:
    name = env.name

    @dg.op(
        name=f"fleet_targets_{name}",
        out=dg.DynamicOut(str),
        description=f"The databases of {name}'s fleet (migrate.toml), one output each.",
    )
    def fleet_targets(
        context: dg.OpExecutionContext, migrations: MigrationResource
    ) -> Iterator[dg.DynamicOutput]:
        with metadata.clear_errors():
            databases = fleet.targets(migrations.project(), name)
        context.log.info(f"{len(databases)} fleet target(s) in {name}")
        for database in databases:
            yield dg.DynamicOutput(database, mapping_key=database)

    @dg.op(
        name=f"migrate_target_{name}",
        # Every target of this environment lives on its server: the pool bounds how many
        # are migrated at once (`dagster instance concurrency set fleet_<env> N`).
        pool=f"fleet_{name}",
        description="Upgrade one fleet database to head and verify it; a failure is "
        "reported, not raised, so the other targets go on.",
    )
    def migrate_target(
        context: dg.OpExecutionContext, database: str, migrations: MigrationResource
    ) -> dict:
        outcome = fleet.migrate_target(
            migrations.project(), name, database, run_id=context.run.run_id
        )
        log = context.log.error if outcome.status == fleet.FAILED else context.log.info
        log(
            f"{name}/{database}: {outcome.status}"
            + (f": {outcome.error}" if outcome.error else f" ({outcome.steps} step(s))")
        )
        return outcome.to_dict()

    @dg.op(
        name=f"fleet_summary_{name}",
        description="Targets done, up to date and failed; fails the run if any failed.",
    )
    def fleet_summary(context: dg.OpExecutionContext, outcomes: list[dict]) -> Iterator[Any]:
        counts = {
            s: sum(o["status"] == s for o in outcomes)
            for s in (fleet.DONE, fleet.UP_TO_DATE, fleet.FAILED)
        }
        rows = ["| database | status | steps | error |", "|---|---|---|---|"]
        rows += [
            f"| {o['database']} | {o['status']} | {o['steps']} | {o['error'] or ''} |"
            for o in sorted(outcomes, key=lambda o: (o["status"] != "failed", o["database"]))
        ]
        summary = {
            "targets": dg.MetadataValue.int(len(outcomes)),
            "done": dg.MetadataValue.int(counts[fleet.DONE]),
            "up_to_date": dg.MetadataValue.int(counts[fleet.UP_TO_DATE]),
            "failed": dg.MetadataValue.int(counts[fleet.FAILED]),
            "targets_table": dg.MetadataValue.md("\n".join(rows)),
        }
        context.instance.add_run_tags(
            context.run.run_id,
            {
                f"migrate/fleet_{status.replace(' ', '_')}": str(count)
                for status, count in counts.items()
            },
        )
        yield dg.Output(counts, metadata=summary)
        failed = sorted(o["database"] for o in outcomes if o["status"] == fleet.FAILED)
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {len(outcomes)} {name} fleet target(s) failed: "
                + ", ".join(failed)
                + ". Launch the job again: only these have work left.",
                metadata=summary,
            )

    @dg.job(
        name=f"fleet_{name}",
        description=f"Migrate every database of {name}'s fleet to head and verify it, in "
        "parallel processes; one failing target does not stop the others.",
        executor_def=dg.multiprocess_executor,
    )
    def fleet_job() -> None:
        fleet_summary(fleet_targets().map(migrate_target).collect())

    return fleet_job
