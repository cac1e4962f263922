"""The Dagster integration as another project adds it: imported with no I/O, two Alembic
projects in one code location next to a team's own definitions, materialized for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import (
    CRM_TOML,
    ECOMMERCE_HEAD,
    ENV_URL_VARS,
    REPO,
    Databases,
    Workspace,
    _free_port,
    _start,
    _stop,
    simple_revision,
)

from dagster_alembic import launcher
from dagster_alembic.definitions import build_definitions
from dagster_alembic.defs.translator import SchemaAssetProps, SchemaAssetTranslator
from dagster_alembic.errors import ConfigurationError


@pytest.fixture
def crm(tmp_path: Path, databases: Databases, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A second Alembic project (a copy of this repository's migrations) on databases of its
    own, named by variables of its own."""
    root = tmp_path / "crm"
    root.mkdir()
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    (root / "migrate.toml").write_text(CRM_TOML)
    shutil.copytree(
        REPO / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    urls = {env: databases.create(f"crm_{env}") for env in ("dev", "staging", "prod")}
    for env, url in urls.items():
        monkeypatch.setenv(f"CRM_{env.upper()}_DATABASE_URL", url.render_as_string(False))
    return Workspace(root, urls)


class Warehouse(dg.ConfigurableResource):
    name: str = "warehouse"


def team_definitions() -> dg.Definitions:
    """A team's own code location: an asset, a resource, and an executor of its own."""

    @dg.asset
    def orders_report(warehouse: Warehouse) -> None:
        pass

    return dg.Definitions(
        assets=[orders_report],
        resources={"warehouse": Warehouse()},
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )


def test_importing_the_integration_reads_nothing(tmp_path: Path):
    """From a directory with no alembic.ini: the import must not look for one."""
    env = {k: v for k, v in os.environ.items() if k != "ALEMBIC_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-c", "import dagster_alembic.definitions, dagster_alembic.defs.specs"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_projects_and_a_teams_definitions_merge_and_load(workspace: Workspace, crm: Workspace):
    ours = build_definitions(str(workspace.ini))
    toml = crm.root / "migrate.toml"  # a fleet job exists only where a fleet is configured
    toml.write_text(toml.read_text() + '\n[environments.dev.fleet]\ndatabases = ["t1"]\n')
    theirs = build_definitions(str(crm.ini), prefix="crm")
    merged = dg.Definitions.merge(team_definitions(), ours, theirs)
    dg.Definitions.validate_loadable(merged)

    assert ours.executor is None and theirs.executor is None
    # the team's executor is the code location's; each migration job keeps its own
    assert merged.executor is not None and merged.executor.name == "multiprocess"
    for job in ("migrate", "crm_migrate", "promote", "crm_promote", "crm_environment_sync"):
        assert merged.resolve_job_def(job).executor_def.name == "in_process", job
    fleet = merged.resolve_job_def("crm_fleet_dev").executor_def
    assert fleet.name == "multi_or_in_process_executor"
    assert set(merged.resources or {}) == {"warehouse", "migrations", "crm_migrations"}
    assert {s.name for s in merged.sensors or []} == {
        "revision_files_sensor",
        "promotion_automation",
        "crm_revision_files_sensor",
        "crm_promotion_automation",
        "revision_observer",
        "crm_revision_observer",
    }
    assert {s.name for s in merged.schedules or []} == {"environment_sync", "crm_environment_sync"}

    graph = merged.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    # prefix="" keeps the contract keys; the prefix goes in front of them
    assert {"dev/ecommerce", "crm/dev/ecommerce", "crm/prod/analytics", "orders_report"} <= keys
    assert {
        p.to_user_string()
        for p in graph.get(dg.AssetKey(["crm", "staging", "analytics"])).parent_keys
    } == {
        "crm/dev/analytics",
        "crm/staging/ecommerce",
    }
    assert dg.AssetCheckKey(dg.AssetKey(["crm", "prod", "ecommerce"]), "verify") in (
        graph.asset_check_keys
    )
    # the prefixed project's sensor asks for its own first environment's assets
    sensor = next(s for s in merged.sensors or [] if s.name == "crm_revision_files_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=merged)
        assert isinstance(sensor(context), dg.SkipReason)  # first tick: cursor only
        crm.add_revision(
            "ecommerce",
            "2024_03_02_0900-crm000000001_add.py",
            simple_revision("crm000000001", ECOMMERCE_HEAD, "leads"),
        )
        context = dg.build_sensor_context(
            instance=instance, definitions=merged, cursor=context.cursor
        )
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert [r.asset_selection for r in result.run_requests or []] == [
        [dg.AssetKey(["crm", "dev", "ecommerce"])]
    ]


def test_a_prefixed_projects_schema_asset_materializes_against_its_database(
    workspace: Workspace, crm: Workspace
):
    merged = dg.Definitions.merge(
        team_definitions(),
        build_definitions(str(workspace.ini)),
        build_definitions(str(crm.ini), prefix="crm"),
    )
    key = dg.AssetKey(["crm", "dev", "ecommerce"])
    with dg.instance_for_test() as instance:
        result = merged.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[key]
        )
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert {(c.asset_key, c.check_name, c.passed) for c in checks} == {
            (key, "verify", True),  # blocking
            (key, "lint", True),  # the example revisions lint clean in dev
        }
        event = instance.get_latest_materialization_event(key)
        assert event is not None
        assert event.asset_materialization.metadata["current_revision"].value == ECOMMERCE_HEAD

    assert crm.version_heads("dev") == {ECOMMERCE_HEAD}
    assert {r.run_id for r in crm.audit("dev")} == {result.run_id}
    # the other project's databases, and the crm project's later environments, untouched
    assert workspace.version_heads("dev") == set() and workspace.audit("dev") == []
    assert crm.version_heads("staging") == set()


def test_a_prefixed_projects_migrate_job_runs_with_the_same_run_config(
    workspace: Workspace, crm: Workspace
):
    defs = build_definitions(str(crm.ini), prefix="crm")
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("crm_migrate").execute_in_process(
            instance=instance,
            run_config={"ops": {"upgrade": {"config": {"schemas": ["ecommerce"]}}}},
        )
    assert result.success
    assert crm.version_heads("dev") == {ECOMMERCE_HEAD}
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {dg.AssetKey(["crm", "dev", "ecommerce"])}


def test_the_resource_takes_urls_as_env_vars_in_place_of_migrate_toml(
    crm: Workspace, monkeypatch: pytest.MonkeyPatch
):
    """URLs given to the resource (as dg.EnvVar) win over the variables migrate.toml names;
    an environment not given keeps its variable."""
    dev = crm.urls["dev"]
    monkeypatch.setenv("TEAM_SECRET_CRM_DEV", dev.render_as_string(False))
    monkeypatch.delenv("CRM_DEV_DATABASE_URL")
    defs = build_definitions(
        str(crm.ini), prefix="crm", database_urls={"dev": dg.EnvVar("TEAM_SECRET_CRM_DEV")}
    )
    resource = defs.resources["crm_migrations"]
    assert resource.database_urls == {"dev": "TEAM_SECRET_CRM_DEV"}  # the variable's name
    key = dg.AssetKey(["crm", "dev", "ecommerce"])
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[key]
        )
    assert result.success
    assert crm.version_heads("dev") == {ECOMMERCE_HEAD}
    # the observer sensor (built with the Definitions, run outside any run) reads it too
    observer = defs.resolve_sensor_def("crm_revision_observer")
    with dg.instance_for_test() as instance:
        observed = observer(dg.build_sensor_context(instance=instance, definitions=defs))
    current = {o.asset_key: o.metadata["current_revision"].value for o in observed.asset_events}
    assert current[key] == ECOMMERCE_HEAD
    assert dev.render_as_string(False) not in repr(defs.resources)


def test_resource_urls_with_a_password_or_an_unknown_environment_are_refused(crm: Workspace):
    with pytest.raises(ConfigurationError, match=r"holds a password: give it as dg.EnvVar"):
        build_definitions(
            str(crm.ini), database_urls={"dev": "postgresql://u:hunter2@db.example/crm"}
        )
    with pytest.raises(ConfigurationError, match="unknown environment 'qa'"):
        build_definitions(str(crm.ini), database_urls={"qa": dg.EnvVar("QA_URL")})
    # no password, no secret: a literal is fine
    build_definitions(str(crm.ini), database_urls={"dev": "postgresql://u@db.example/crm"})


def test_a_prefix_that_is_not_a_name_is_refused(workspace: Workspace):
    with pytest.raises(ValueError, match="prefix"):
        build_definitions(str(workspace.ini), prefix="my-team")


# --- plain dagster commands in the project folder, with no variable set ------------------

UNSET = (
    *ENV_URL_VARS,
    "DAGSTER_HOME",
    launcher.STORAGE_ENV,
    "ALEMBIC_CONFIG",
)


def _bare_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in UNSET}


def test_dagster_definitions_validate_needs_no_variable(workspace: Workspace):
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=workspace.root,
        env=_bare_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Validation successful for code location dagster_alembic.definitions" in done.stdout
    assert "Using temporary directory" in done.stdout


@pytest.mark.slow
def test_dagster_dev_serves_the_code_location_with_no_variable(workspace: Workspace, tmp_path):
    port = _free_port()
    log = tmp_path / "dev.log"
    dev = _start(
        ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        _bare_env(),
        workspace.root,
        log,
    )
    query = json.dumps(
        {
            "query": "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "locationOrLoadError { __typename } } } } }"
        }
    ).encode()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=query,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
                loaded = [e["locationOrLoadError"] for e in entries]
                if loaded and all(x is not None for x in loaded):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or dev.poll() is not None:
                pytest.fail(log.read_text()[-3000:])
            time.sleep(1)
        assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
            ("dagster_alembic.definitions", "RepositoryLocation")
        ]
    finally:
        _stop(dev)
    assert "DAGSTER_POSTGRES_URL" not in log.read_text()


def test_the_project_instance_file_needs_no_variable_and_migrate_ui_adds_postgres(
    workspace: Workspace, tmp_path: Path, databases, monkeypatch
):
    monkeypatch.delenv(launcher.STORAGE_ENV, raising=False)
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert "storage" not in config
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(REPO / "dagster.yaml", local / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(local)) as instance:  # Dagster's loader validates
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1

    home = launcher.prepare_dagster_home(workspace.project().settings, tmp_path / "home")
    prepared = yaml.safe_load((home / "dagster.yaml").read_text())
    assert prepared["storage"] == {"postgres": {"postgres_url": {"env": launcher.STORAGE_ENV}}}
    assert {k: v for k, v in prepared.items() if k != "storage"} == config
    monkeypatch.setenv(launcher.STORAGE_ENV, databases.create("dagster").render_as_string(False))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"


# --- the translator: one get_asset_spec, every selection built from its specs -------------


class TeamTranslator(SchemaAssetTranslator):
    """A team's naming: keys under "db", prod spelled "production", a group of its own."""

    def get_asset_spec(self, props: SchemaAssetProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        path = ["production" if p == "prod" else p for p in spec.key.path]
        return spec.replace_attributes(key=dg.AssetKey(["db", *path]), group_name="platform")

    def get_asset_check_spec(
        self, asset_spec: dg.AssetSpec, props: SchemaAssetProps
    ) -> dg.AssetCheckSpec:
        spec = super().get_asset_check_spec(asset_spec, props)
        return spec.with_metadata({"owner": "platform"})


def test_a_translator_that_changes_keys_keeps_deps_jobs_and_sensors_right(
    workspace: Workspace,
):
    defs = build_definitions(str(workspace.ini), translator=TeamTranslator())
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    assert parents == {
        "db/dev/ecommerce": set(),
        "db/dev/analytics": {"db/dev/ecommerce"},
        "db/staging/ecommerce": {"db/dev/ecommerce"},
        "db/staging/analytics": {"db/dev/analytics", "db/staging/ecommerce"},
        "db/production/ecommerce": {"db/staging/ecommerce"},
        "db/production/analytics": {"db/staging/analytics", "db/production/ecommerce"},
    }
    assert {graph.get(k).group_name for k in graph.get_all_asset_keys()} == {"platform"}
    verify = [c for c in graph.asset_check_keys if c.name == "verify"]  # lint, in_step too
    assert {c.to_user_string() for c in verify} == {f"{k}:verify" for k in parents}
    assert all(graph.get_check_spec(c).blocking for c in verify)
    assert graph.get_check_spec(
        dg.AssetCheckKey(dg.AssetKey(["db", "dev", "ecommerce"]), "verify")
    ).metadata == {"owner": "platform"}

    # job selections: promote carries every asset, environment_sync the promote=auto ones
    # and every check
    def selected(job: str) -> set[str]:
        nodes = defs.resolve_job_def(job).asset_layer.asset_graph
        return {k.to_user_string() for k in nodes.executable_asset_keys}

    assert selected("promote") == set(parents)
    # environment_sync is ops (upgrade, then verify every environment): it selects no asset,
    # and reports on the keys of the specs (test_dagster runs it)
    assert selected("environment_sync") == set()

    # the sensor asks for the team's key of the first environment
    sensor = defs.resolve_sensor_def("revision_files_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        sensor(context)
        workspace.add_revision(
            "ecommerce",
            "2024_03_02_0900-team00000001_add.py",
            simple_revision("team00000001", ECOMMERCE_HEAD, "leads"),
        )
        result = sensor(
            dg.build_sensor_context(instance=instance, definitions=defs, cursor=context.cursor)
        )
        assert isinstance(result, dg.SensorResult)
        assert [r.asset_selection for r in result.run_requests or []] == [
            [dg.AssetKey(["db", "dev", "ecommerce"])]
        ]

        # the migrate job's steps show on the team's keys, its verify on their checks
        run = defs.resolve_job_def("migrate").execute_in_process(instance=instance)
        assert run.success
        materialized = {
            e.asset_key.to_user_string() for e in run.get_asset_materialization_events()
        }
        assert materialized == {"db/dev/ecommerce", "db/dev/analytics"}
        key = dg.AssetCheckKey(dg.AssetKey(["db", "dev", "analytics"]), "verify")
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])
        assert latest[key].run_id == run.run_id
