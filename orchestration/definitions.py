"""The Dagster integration: `build_definitions` for any Alembic project, and `defs`, this
repository's own code location (`dagster dev -w workspace.yaml` loads it from here).

Importing this module reads nothing: Dagster calls `defs` when it loads the code location,
and a team calls `build_definitions(...)` from its own `@dg.definitions` function.
Everything comes from the Alembic project: a new schema folder in version_locations is new
assets, no code.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from orchestration import scan
from orchestration.defs.assets import build_schema_assets
from orchestration.defs.fleet import build_fleet_job
from orchestration.defs.jobs import build_jobs
from orchestration.defs.resource import MigrationResource, default_alembic_ini
from orchestration.defs.schedules import build_environment_sync
from orchestration.defs.sensors import build_revision_files_sensor
from orchestration.defs.specs import Names, build_specs
from orchestration.defs.translator import SchemaAsset, SchemaAssetTranslator
from orchestration.settings import ProjectSettings, load_settings

SYNC_CRON = "0 3 * * *"


def discover_schemas(settings: ProjectSettings) -> list[SchemaAsset]:
    """Schemas and their depends_on graph, read from the files without importing them."""
    files = scan.scan(settings.histories)
    graph = scan.schema_dependencies(files)
    return [
        SchemaAsset(
            schema=history.schema,
            revisions=tuple(
                sorted(
                    (f for f in files if f.schema == history.schema),
                    key=lambda f: Path(f.path).name,
                )
            ),
            depends_on_schemas=frozenset(graph.get(history.schema, ())),
        )
        for history in settings.histories
    ]


def build_definitions(
    alembic_ini: str | None = None,
    *,
    prefix: str = "",
    translator: SchemaAssetTranslator | None = None,
) -> dg.Definitions:
    """contract: the whole code location for one Alembic project.

    alembic_ini: the project's alembic.ini; default like alembic: $ALEMBIC_CONFIG, else
        ./alembic.ini.
    prefix: for a second project in one code location: goes in front of every asset key
        (``prefix/dev/ecommerce``), and of the resource key, job, sensor and schedule names
        (``prefix_migrations``, ``prefix_migrate``, ...). "" keeps the keys [env, schema]
        and the names this repository's own code location has.
    translator: a SchemaAssetTranslator (subclass) to change the asset and check specs;
        jobs, sensors and automation take their keys from the specs it returns.

    No executor is set on the Definitions, so they merge with a team's
    (``dg.Definitions.merge``): each job of this project carries its own.
    """
    names = Names(prefix)
    settings = load_settings(alembic_ini or default_alembic_ini())
    environments = list(settings.environments)
    env_names = [e.name for e in environments]
    auto_envs = [e.name for e in environments if e.promote == "auto"]
    specs = build_specs(
        environments, discover_schemas(settings), translator or SchemaAssetTranslator(), prefix
    )
    assets, checks = build_schema_assets(specs, names.resource_key)
    all_keys, auto_keys = specs.keys(), specs.keys(auto_envs)
    # Alembic is not thread-safe and each step is short: every job of this project runs its
    # steps one after another in the run's process, not a process start per step.
    promote = dg.define_asset_job(
        names("promote"),
        selection=dg.AssetSelection.assets(*all_keys),
        executor_def=dg.in_process_executor,
        description=(
            "Carry the selected schemas dev -> staging -> prod, each environment behind the "
            "blocking verify of the one before it."
        ),
    )
    sync = dg.define_asset_job(
        names("environment_sync"),
        selection=dg.AssetSelection.assets(*auto_keys)
        | dg.AssetSelection.checks_for_assets(*all_keys),
        executor_def=dg.in_process_executor,
        description="Upgrade promote=auto environments in order and verify every environment.",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[
            *build_jobs(specs, env_names, names),
            promote,
            sync,
            *(build_fleet_job(env, names) for env in environments),
        ],
        sensors=[
            build_revision_files_sensor(
                settings, specs, env_names[0], names("revision_files_sensor")
            ),
            # Dagster's default automation sensor starts STOPPED; promote = "auto" in
            # migrate.toml is meant to work as soon as the daemon runs.
            dg.AutomationConditionSensorDefinition(
                names("promotion_automation"),
                target=dg.AssetSelection.assets(*auto_keys),
                default_status=dg.DefaultSensorStatus.RUNNING,
                description="Carries schemas into promote=auto environments once the "
                "environment before them verified.",
            ),
        ],
        schedules=[build_environment_sync(sync, SYNC_CRON, names("environment_sync"))],
        resources={names.resource_key: MigrationResource(alembic_ini=str(settings.alembic_ini))},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """This repository's code location, built when Dagster loads it (not at import): the
    Alembic project of $ALEMBIC_CONFIG, else ./alembic.ini."""
    return build_definitions()
