"""The integration as another `dg` project adds it, both ways: a separate project in a temp
dir whose defs.yaml names AlembicMigrationsComponent with a prefix (billing), and whose
definitions.py merges build_definitions(prefix="crm") with its own asset, resource and
executor; `dg check defs`, `dg list defs` and `dg launch` there, against a real PostgreSQL. Also
`dg check defs` and `dg list components` in this repository's root (itself a dg project)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from conftest import CRM_TOML, ECOMMERCE_HEAD, ENV_URL_VARS, REPO, Databases, Workspace

from dagster_alembic import launcher
from dagster_alembic.components import AlembicMigrationsComponent

BIN = Path(sys.executable).parent
DG = str(BIN / "dg")

TEAM_PYPROJECT = """
[project]
name = "team-project"
version = "0.0.1"
requires-python = ">=3.11"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "team_project"
"""

# The team's code location: its defs folder (with the Component), a second Alembic project
# through the Python factory with a prefix, and the team's own resource and executor.
TEAM_DEFINITIONS = """
from pathlib import Path

import dagster as dg

from dagster_alembic.definitions import build_definitions

HERE = Path(__file__).parent


class Warehouse(dg.ConfigurableResource):
    name: str = "warehouse"


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=HERE),
        build_definitions(str(HERE.parent / "crm" / "alembic.ini"), prefix="crm"),
        dg.Definitions(
            resources={"warehouse": Warehouse()},
            executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
        ),
    )
"""

TEAM_ASSET = """
import dagster as dg


@dg.asset
def orders_report() -> None:
    pass
"""


# The component's folder is team/team_project/defs/billing: alembic_ini is relative to it.
BILLING_DEFS_YAML = """
type: dagster_alembic.components.AlembicMigrationsComponent

attributes:
  alembic_ini: ../../../billing/alembic.ini
  prefix: billing
  translation:
    tags:
      team: "billing"
      schema_name: "{{ schema }}"
"""


def _copy_project(folder: Path, migrate_toml: str) -> None:
    folder.mkdir(parents=True)
    shutil.copy(REPO / "alembic.ini", folder / "alembic.ini")
    (folder / "migrate.toml").write_text(migrate_toml)
    shutil.copytree(
        REPO / "migrations", folder / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )


@pytest.fixture
def team(tmp_path: Path, databases: Databases) -> Workspace:
    """A second, separate dg project (team/) with an asset of its own and, in billing/, a
    copy of this repository's Alembic project on fresh databases (its URLs in the usual
    variables), and in crm/ another (its URLs in CRM_* variables, see crm_urls)."""
    root = tmp_path / "team"
    billing = root / "billing"
    _copy_project(billing, (REPO / "migrate.toml").read_text())
    _copy_project(root / "crm", CRM_TOML)
    (root / "pyproject.toml").write_text(TEAM_PYPROJECT)
    package = root / "team_project"
    (package / "defs" / "billing").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "definitions.py").write_text(TEAM_DEFINITIONS)
    (package / "defs" / "__init__.py").write_text("")
    (package / "defs" / "orders.py").write_text(TEAM_ASSET)
    (package / "defs" / "billing" / "defs.yaml").write_text(BILLING_DEFS_YAML)
    urls = {env: databases.create(f"billing_{env}") for env in ("dev", "staging", "prod")}
    return Workspace(billing, urls)


@pytest.fixture
def crm(team: Workspace, databases: Databases) -> Workspace:
    urls = {env: databases.create(f"crm_{env}") for env in ("dev", "staging", "prod")}
    return Workspace(team.root.parent / "crm", urls)


def _env(team: Workspace | None = None, crm: Workspace | None = None) -> dict[str, str]:
    """The environment a user's shell has: this venv active, no Dagster home or storage
    variable; the copied projects' URL variables when they are given."""
    unset = {*ENV_URL_VARS, "DAGSTER_HOME", launcher.STORAGE_ENV, "ALEMBIC_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["VIRTUAL_ENV"] = str(BIN.parent)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if team is not None:
        for name, url in team.urls.items():
            env[f"{name.upper()}_DATABASE_URL"] = url.render_as_string(False)
    if crm is not None:
        for name, url in crm.urls.items():
            env[f"CRM_{name.upper()}_DATABASE_URL"] = url.render_as_string(False)
    return env


def _dg(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DG, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def _listed(done: subprocess.CompletedProcess) -> dict:
    """`dg list defs --json`'s document (warnings may come before it on the same stream)."""
    return json.loads(done.stdout[done.stdout.index("{") :])


@pytest.mark.slow
def test_a_dg_project_adds_both_ways_checks_lists_and_materializes_them(
    team: Workspace, crm: Workspace
):
    project = team.root.parent

    checked = _dg("check", "defs", cwd=project, env=_env())
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert "All definitions loaded successfully" in checked.stdout

    # no database variable is needed to list them: nothing connects at load time
    listed = _dg("list", "defs", "--json", cwd=project, env=_env())
    assert listed.returncode == 0, listed.stdout[-3000:]
    defs = _listed(listed)
    keys = {a["asset_key"] for a in defs["assets"]}
    assert keys == {"orders_report"} | {
        f"{project}/{env}/{schema}"
        for project in ("billing", "crm")
        for env in ("dev", "staging", "prod")
        for schema in ("ecommerce", "analytics")
    }
    dev_ecommerce = next(a for a in defs["assets"] if a["asset_key"] == "billing/dev/ecommerce")
    # translation from defs.yaml: templated per schema, merged with the default tags
    assert {(t["key"], t["value"]) for t in dev_ecommerce["tags"]} >= {
        ("team", "billing"),
        ("schema_name", "ecommerce"),
        ("environment", "dev"),
    }
    assert dev_ecommerce["group_name"] == "billing_dev"
    assert {j["name"] for j in defs["jobs"]} >= {
        "billing_migrate",
        "billing_rollback",
        "billing_promote",
        "billing_environment_sync",
    }
    assert {"crm_migrate", "crm_rollback"} <= {j["name"] for j in defs["jobs"]}
    assert sorted(r["name"] for r in defs["resources"]) == [
        "billing_migrations",
        "crm_migrations",
        "warehouse",
    ]
    assert {
        "billing_revision_files_sensor",
        "billing_promotion_automation",
        "crm_revision_files_sensor",
        "crm_promotion_automation",
    } <= {s["name"] for s in defs["sensors"]}

    launched = _dg("launch", "--assets", "billing/dev/ecommerce", cwd=project, env=_env(team))
    assert launched.returncode == 0, launched.stdout[-5000:]
    assert "RUN_SUCCESS" in launched.stdout
    assert "ASSET_CHECK_EVALUATION" in launched.stdout

    assert team.version_heads("dev") == {ECOMMERCE_HEAD}
    assert {"customers", "orders", "products"} <= team.tables("ecommerce", "dev")
    audit = team.audit("dev")
    assert audit and all(r.success for r in audit)
    assert {r.schema_name for r in audit} == {"ecommerce"}
    assert ECOMMERCE_HEAD in {r.alembic_version for r in audit}
    # only what was launched: the next environment and the other schema are untouched
    assert team.version_heads("staging") == set()
    assert team.tables("analytics", "dev") == set()
    assert crm.version_heads("dev") == set()

    # the factory's project, next to the team's executor and resource
    launched = _dg("launch", "--assets", "crm/dev/analytics", cwd=project, env=_env(team, crm))
    assert launched.returncode == 0, launched.stdout[-5000:]
    assert "RUN_SUCCESS" in launched.stdout
    assert crm.tables("analytics", "dev")
    assert "analytics" in {r.schema_name for r in crm.audit("dev")}
    assert team.tables("analytics", "dev") == set()  # billing's databases untouched


def test_the_component_in_process_materializes_through_the_loaded_definitions(
    team: Workspace, monkeypatch: pytest.MonkeyPatch
):
    """The same defs.yaml loaded in this process by Dagster's own loader."""
    for name, url in team.urls.items():
        monkeypatch.setenv(f"{name.upper()}_DATABASE_URL", url.render_as_string(False))
    project = team.root.parent
    monkeypatch.syspath_prepend(str(project))
    try:
        defs = dg.load_from_defs_folder(path_within_project=project / "team_project")
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == "team_project"]:
            del sys.modules[module]
    assert dg.AssetKey("orders_report") in {a.key for a in defs.resolve_all_asset_specs()}
    key = dg.AssetKey(["billing", "dev", "analytics"])
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(["billing", "dev", "ecommerce"]), key],
        )
    assert result.success
    assert {
        (c.asset_key, c.check_name, c.passed)
        for c in result.get_asset_check_evaluations()
        if c.check_name == "verify"
    } == {
        (dg.AssetKey(["billing", "dev", "ecommerce"]), "verify", True),
        (key, "verify", True),
    }
    assert team.tables("analytics", "dev")
    assert {r.run_id for r in team.audit("dev")} == {result.run_id}


def test_the_component_is_a_resolvable_dataclass_with_yaml_fields():
    fields = AlembicMigrationsComponent.model().model_fields
    assert {"alembic_ini", "prefix", "translation"} <= set(fields)


# --- this repository is itself a dg project ------------------------------------------------


def test_dg_check_defs_and_list_components_in_this_repository():
    checked = _dg("check", "defs", cwd=REPO, env=_env())
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert "All definitions loaded successfully" in checked.stdout

    listed = _dg("list", "defs", "--json", cwd=REPO, env=_env())
    assert listed.returncode == 0, listed.stdout[-3000:]
    assert "dev/ecommerce" in {a["asset_key"] for a in _listed(listed)["assets"]}

    components = _dg("list", "components", "--json", cwd=REPO, env=_env())
    assert components.returncode == 0, components.stdout[-3000:]
    assert "dagster_alembic.components.AlembicMigrationsComponent" in components.stdout
