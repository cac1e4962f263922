"""fleet_<env> jobs: every fleet target of an environment, over a pool of processes."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_alembic import fleet
from dagster_alembic.defs import metadata
from dagster_alembic.defs.resource import MigrationResource
from dagster_alembic.defs.specs import Names
from dagster_alembic.settings import EnvironmentSettings


class FleetConfig(dg.Config):
    processes: int = Field(
        default=0,
        ge=0,
        description="worker processes that migrate targets at once, in each step; "
        "0: one per core of the machine",
    )
    targets_per_step: int = Field(
        default=0,
        ge=0,
        description="targets per step; 0: all in one step. With the multiprocess "
        "executor (execution: config: multiprocess), steps run in processes of their own.",
    )


def batches(databases: list[str], targets_per_step: int) -> list[list[str]]:
    """Split the targets into steps (default: one step for all of them)."""
    if not databases:
        return []
    size = targets_per_step or len(databases)
    return [databases[i : i + size] for i in range(0, len(databases), size)]


def build_fleet_job(env: EnvironmentSettings, names: Names) -> dg.JobDefinition:
    name = env.name
    resource_key = names.resource_key

    @dg.op(
        name=names(f"fleet_targets_{name}"),
        required_resource_keys={resource_key},
        out=dg.DynamicOut(dict),
        description=f"The databases of {name}'s fleet (migrate.toml), in batches.",
    )
    def fleet_targets(
        context: dg.OpExecutionContext, config: FleetConfig
    ) -> Iterator[dg.DynamicOutput]:
        migrations: MigrationResource = getattr(context.resources, resource_key)
        with metadata.clear_errors():
            databases = fleet.targets(migrations.project(), name)
        parts = batches(databases, config.targets_per_step)
        context.log.info(f"{len(databases)} fleet target(s) in {name}, {len(parts)} step(s)")
        for part in parts:
            key = part[0] if len(part) == 1 else f"{part[0]}__{len(part)}"
            yield dg.DynamicOutput(
                {"databases": part, "processes": config.processes}, mapping_key=key
            )

    @dg.op(
        name=names(f"migrate_targets_{name}"),
        required_resource_keys={resource_key},
        # Every target of this environment lives on its server: the pool bounds how many
        # steps work on it at once (`dagster instance concurrency set fleet_<env> N`).
        pool=f"fleet_{name}",
        description="Upgrade each fleet database of the batch to head and verify it, over a "
        "pool of worker processes; a failure is reported, not raised, so the others go on.",
    )
    def migrate_targets(context: dg.OpExecutionContext, batch: dict) -> list:
        migrations: MigrationResource = getattr(context.resources, resource_key)
        outcomes = []
        for outcome in fleet.migrate_targets(
            migrations.project(),
            name,
            batch["databases"],
            processes=batch["processes"],
            run_id=context.run.run_id,
        ):
            log = context.log.error if outcome.status == fleet.FAILED else context.log.info
            log(
                f"{name}/{outcome.database}: {outcome.status}"
                + (f": {outcome.error}" if outcome.error else f" ({outcome.steps} step(s))")
            )
            outcomes.append(outcome.to_dict())
        return outcomes

    @dg.op(
        name=names(f"fleet_summary_{name}"),
        description="Targets done, up to date and failed; fails the run if any failed.",
    )
    def fleet_summary(context: dg.OpExecutionContext, results: list[list]) -> Iterator[Any]:
        outcomes = [outcome for batch in results for outcome in batch]
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
        name=names(f"fleet_{name}"),
        description=f"Migrate every database of {name}'s fleet to head and verify it, in "
        "parallel processes; one failing target does not stop the others.",
        # Steps in the run's process by default: the pool in each step gives the
        # parallelism, without Dagster's ~1.5 s process start per step. The multiprocess
        # executor stays one choice of run config away, with targets_per_step.
        executor_def=dg.multi_or_in_process_executor,
        config={"execution": {"config": {"in_process": {}}}},
    )
    def fleet_job() -> None:
        fleet_summary(fleet_targets().map(migrate_targets).collect())

    return fleet_job
