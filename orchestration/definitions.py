"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here.

Everything comes from the Alembic project found like alembic finds it ($ALEMBIC_CONFIG,
else ./alembic.ini): a new schema folder in version_locations is new assets, no code.
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
    translator_class: type[SchemaAssetTranslator] = SchemaAssetTranslator,
) -> dg.Definitions:
    settings = load_settings(alembic_ini or default_alembic_ini())
    translator = translator_class(settings.environments)
    schemas = discover_schemas(settings)
    assets, checks = build_schema_assets(schemas, translator)
    all_keys = [
        translator.get_asset_key(e.name, s.schema) for e in settings.environments for s in schemas
    ]
    auto_keys = [
        translator.get_asset_key(e.name, s.schema)
        for e in settings.environments
        if e.promote == "auto"
        for s in schemas
    ]
    promote = dg.define_asset_job(
        "promote",
        selection=dg.AssetSelection.assets(*all_keys),
        description=(
            "Carry the selected schemas dev -> staging -> prod, each environment behind the "
            "blocking verify of the one before it."
        ),
    )
    sync = dg.define_asset_job(
        "environment_sync",
        selection=dg.AssetSelection.assets(*auto_keys)
        | dg.AssetSelection.checks_for_assets(*all_keys),
        description="Upgrade promote=auto environments in order and verify every environment.",
    )
    first_env = settings.environments[0].name
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[
            *build_jobs(translator),
            promote,
            sync,
            *(build_fleet_job(env) for env in settings.environments),
        ],
        sensors=[
            build_revision_files_sensor(settings, translator, first_env),
            # Dagster's default automation sensor starts STOPPED; promote = "auto" in
            # migrate.toml is meant to work as soon as the daemon runs.
            dg.AutomationConditionSensorDefinition(
                "promotion_automation",
                target=dg.AssetSelection.assets(*auto_keys),
                default_status=dg.DefaultSensorStatus.RUNNING,
                description="Carries schemas into promote=auto environments once the "
                "environment before them verified.",
            ),
        ],
        schedules=[build_environment_sync(sync, SYNC_CRON)],
        resources={"migrations": MigrationResource(alembic_ini=str(settings.alembic_ini))},
        # Alembic is not thread-safe and each step is short: run steps one after another in
        # the run's process rather than paying a process start per step.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
