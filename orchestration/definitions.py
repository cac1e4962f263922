"""The Dagster integration: `build_definitions` for any Alembic project, and `defs`, this
repository's own code location (`dagster dev -w workspace.yaml` loads it from here).

Importing this module reads nothing: Dagster calls `defs` when it loads the code location,
and a team calls `build_definitions(...)` from its own `@dg.definitions` function.
Everything comes from the Alembic project: a new schema folder in version_locations is new
assets, no code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from dagster_alembic import scan
from dagster_alembic.defs.assets import build_schema_assets
from dagster_alembic.defs.fleet import build_fleet_job
from dagster_alembic.defs.jobs import build_jobs
from dagster_alembic.defs.observe import build_in_step_checks, build_revision_observer
from dagster_alembic.defs.resource import MigrationResource, config_path, default_alembic_ini
from dagster_alembic.defs.schedules import build_environment_sync
from dagster_alembic.defs.sensors import build_revision_files_sensor
from dagster_alembic.defs.specs import Names, build_specs
from dagster_alembic.defs.translator import SchemaAsset, SchemaAssetTranslator
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import ProjectSettings, load_settings
from dagster_alembic.urls import has_password

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
    database_urls: Mapping[str, str] | None = None,
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
    database_urls: an environment's database URL by environment name, as
        ``dg.EnvVar("BILLING_DEV_URL")``, in place of the variable migrate.toml names
        (the resource's config ``database_urls``). A literal URL with a password is
        refused: Dagster's UI shows resource config.

    No executor is set on the Definitions, so they merge with a team's
    (``dg.Definitions.merge``): each job of this project carries its own.
    """
    names = Names(prefix)
    urls = _database_urls(database_urls or {})
    # Sensors and checks read the settings built here, outside any run: a dg.EnvVar is
    # read from its variable when used, as migrate.toml's url_env.
    settings = load_settings(alembic_ini or default_alembic_ini()).with_urls(
        urls={env: url for env, url in urls.items() if not isinstance(url, dg.EnvVar)},
        variables={
            env: url.env_var_name for env, url in urls.items() if isinstance(url, dg.EnvVar)
        },
    )
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
    jobs = build_jobs(specs, environments, names)
    return dg.Definitions(
        assets=assets,
        asset_checks=[*checks, *build_in_step_checks(settings, specs, names("in_step_checks"))],
        jobs=[
            jobs.migrate,
            jobs.rollback,
            promote,
            jobs.environment_sync,
            # a fleet job only where migrate.toml configures a fleet: none that "succeeds"
            # with no targets
            *(
                build_fleet_job(env, names)
                for env in environments
                if env.fleet_databases or env.fleet_query
            ),
        ],
        sensors=[
            build_revision_files_sensor(
                settings, specs, env_names[0], names("revision_files_sensor")
            ),
            build_revision_observer(settings, specs, names("revision_observer")),
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
        schedules=[
            build_environment_sync(jobs.environment_sync, SYNC_CRON, names("environment_sync"))
        ],
        resources={
            names.resource_key: MigrationResource(
                alembic_ini=config_path(settings.alembic_ini), database_urls=urls
            )
        },
    )


def _database_urls(urls: Mapping[str, str]) -> dict[str, str]:
    """URLs for the resource's config: a dg.EnvVar, or a literal URL without a password."""
    for environment, url in urls.items():
        if not isinstance(url, dg.EnvVar) and has_password(url):
            raise ConfigurationError(
                f"database_urls[{environment!r}] holds a password: give it as "
                f'dg.EnvVar("...") so the Dagster UI shows the variable, not the password'
            )
    return dict(urls)


@dg.definitions
def defs() -> dg.Definitions:
    """This repository's code location, built when Dagster loads it (not at import): the
    Alembic project of $ALEMBIC_CONFIG, else ./alembic.ini."""
    return build_definitions()
