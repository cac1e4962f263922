"""docker-compose.yml, the Dockerfile and the deploy docs agree with the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import REPO

from dagster_alembic import launcher
from dagster_alembic.settings import load_settings

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DAGSTER_SERVICES = ("code-location", "dagster-webserver", "dagster-daemon")


def test_every_service_gets_the_variables_the_code_reads():
    settings = load_settings(REPO / "alembic.ini")
    needed = {env.url_env for env in settings.environments}
    needed |= {launcher.STORAGE_ENV, "DAGSTER_HOME", "ALEMBIC_CONFIG"}
    for name in DAGSTER_SERVICES:
        assert needed <= set(SERVICES[name]["environment"]), name
    for var in needed - {"DAGSTER_HOME", "ALEMBIC_CONFIG"}:
        url = SERVICES["code-location"]["environment"][var]
        assert url.startswith("postgresql+psycopg2://") and "@postgres:5432/" in url


def test_the_init_script_creates_every_database_the_urls_name():
    env = SERVICES["code-location"]["environment"]
    named = {value.rsplit("/", 1)[1] for key, value in env.items() if key.endswith("_URL")}
    script = (REPO / "deploy/postgres-init/01-databases.sql").read_text()
    assert named == set(re.findall(r"CREATE DATABASE (\w+);", script))
    mount = SERVICES["postgres"]["volumes"][1].split(":")[0]
    assert (REPO / mount).resolve() == (REPO / "deploy/postgres-init").resolve()


def test_paths_and_ports_exist_and_agree():
    workspace = yaml.safe_load((REPO / "deploy/workspace.docker.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    code = SERVICES["code-location"]["command"]
    assert grpc["host"] == "code-location"
    assert str(grpc["port"]) == code[code.index("-p") + 1]
    assert code[code.index("-m") + 1] == "dagster_alembic.definitions"
    for name in ("dagster-webserver", "dagster-daemon"):
        cmd = SERVICES[name]["command"]
        path = cmd[cmd.index("-w") + 1]
        assert path == "/opt/project/deploy/workspace.docker.yaml"
    web = SERVICES["dagster-webserver"]
    port = web["command"][web["command"].index("-p") + 1]
    assert web["ports"][0].endswith(f':{port}"') or web["ports"][0].endswith(f":{port}")
    source = SERVICES["code-location"]["volumes"][0].split(":")[0]
    assert (REPO / source).is_dir() and source == "./migrations"


def test_the_dockerfile_copies_what_exists_and_what_compose_uses():
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in dockerfile
    assert "COPY deploy/workspace.docker.yaml" in dockerfile
    assert "WORKDIR /opt/project" in dockerfile


def test_env_example_defines_every_variable_compose_interpolates():
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = (REPO / ".env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    assert used <= defined
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def _instance(folder: Path, file: str, tmp_path: Path) -> dg.DagsterInstance:
    """Dagster's own loader (it validates the file), from a copy named dagster.yaml."""
    home = tmp_path / folder.name / file
    home.mkdir(parents=True)
    shutil.copy(folder / file, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def test_the_instance_files_are_valid_for_dagster(tmp_path, databases, monkeypatch):
    with _instance(REPO, "dagster.yaml", tmp_path) as instance:  # raises when invalid
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    # The image's instance: the project's settings with PostgreSQL storage, kept equal to
    # what `migrate ui` writes into DAGSTER_HOME; opened for real on a fresh database.
    image = yaml.safe_load((REPO / "deploy/dagster.instance.yaml").read_text())
    assert image == launcher.instance_config(REPO / "dagster.yaml")
    assert image["storage"]["postgres"]["postgres_url"] == {"env": launcher.STORAGE_ENV}
    monkeypatch.setenv(launcher.STORAGE_ENV, databases.create("dagster").render_as_string(False))
    with _instance(REPO / "deploy", "dagster.instance.yaml", tmp_path) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    assert "dagster.instance.yaml ${DAGSTER_HOME}/dagster.yaml" in (REPO / "Dockerfile").read_text()
    k8s = yaml.safe_load((REPO / "deploy/dagster.k8s.yaml").read_text())
    assert k8s["storage"] == image["storage"]
    assert k8s["run_launcher"]["class"] == "K8sRunLauncher"
    # the k8s launcher's module is not installed here: load the rest of the file
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "dagster.yaml").write_text(
        yaml.safe_dump({k: v for k, v in k8s.items() if k not in ("run_launcher", "storage")})
    )
    dg.DagsterInstance.from_config(str(tmp_path / "k8s")).dispose()


def test_docker_compose_config_parses():
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must check docker-compose.yml: .ci/run installs docker-compose")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    done = subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        env={**os.environ, "POSTGRES_PASSWORD": "x"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_a_plain_install_carries_every_subpackage(tmp_path):
    """The Docker image runs `pip install .` (not editable): the wheel must hold
    dagster_alembic.defs and dagster_alembic.components, not only the top package."""
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("dagster_alembic/defs/assets.py", "dagster_alembic/components/__init__.py"):
        assert module in names, module
