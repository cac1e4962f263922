"""The environment Dagster's processes need: target URLs, its own storage, DAGSTER_HOME.

The embedded server must be up, and the URLs exported, before dagster's webserver and
daemon open their storage: `migrate ui` does that, then runs `dagster dev`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from dagster_alembic import targets
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import ProjectSettings
from dagster_alembic.urls import normalize_url

STORAGE_ENV = "DAGSTER_POSTGRES_URL"


def dagster_environment(settings: ProjectSettings) -> dict[str, str]:
    """Variables to add to the environment of dagster's processes (nothing secret: the
    embedded server has no password, and configured URLs are already in the environment)."""
    env: dict[str, str] = {"ALEMBIC_CONFIG": str(settings.alembic_ini)}
    target_urls = {
        name: targets.database_url(settings, name) for name in settings.environment_names
    }
    if targets.uses_embedded(settings):
        for name, url in target_urls.items():
            env[settings.environment(name).url_env] = url.render_as_string(hide_password=False)
        if not os.environ.get(STORAGE_ENV):
            storage = targets.dagster_storage_url(settings)
            assert storage is not None
            env[STORAGE_ENV] = storage.render_as_string(hide_password=False)
    raw_storage = env.get(STORAGE_ENV) or os.environ.get(STORAGE_ENV)
    if not raw_storage:
        raise ConfigurationError(
            f"{STORAGE_ENV} is not set: Dagster's own storage needs a PostgreSQL database "
            "of its own (never one of the migrated databases)"
        )
    storage_url = normalize_url(raw_storage)
    for name, target in target_urls.items():
        same_server = (target.host, target.port, target.query.get("host")) == (
            storage_url.host,
            storage_url.port,
            storage_url.query.get("host"),
        )
        if same_server and target.database == storage_url.database:
            raise ConfigurationError(
                f"{STORAGE_ENV} points at the {name} database: Dagster keeps its own "
                "alembic_version there; give it a database of its own"
            )
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which is not installed.
    env[STORAGE_ENV] = storage_url.render_as_string(hide_password=False)
    return env


def prepare_dagster_home(settings: ProjectSettings, home: Path | None = None) -> Path:
    """$DAGSTER_HOME (default .dagster_home/ in the project) holding the project's dagster.yaml.

    Private to its owner (mode 0700, an existing folder's mode is fixed too): run logs and
    compute logs (everything a run printed) are kept there.
    """
    home = Path(home or os.environ.get("DAGSTER_HOME") or settings.root / ".dagster_home")
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(home.stat().st_mode) != 0o700:
        home.chmod(0o700)
    # The project's dagster.yaml has no storage (plain `dagster dev` in the project then uses
    # a temporary instance): here it gets PostgreSQL storage, unless it names its own.
    source, target = settings.root / "dagster.yaml", home / "dagster.yaml"
    if source.is_file() and source.resolve() != target.resolve():
        target.write_text(yaml.safe_dump(instance_config(source), sort_keys=False))
    return home.resolve()


def instance_config(source: Path) -> dict:
    """The project's dagster.yaml with PostgreSQL storage from $DAGSTER_POSTGRES_URL,
    unless it names a storage of its own (deploy/dagster.instance.yaml is this, for the
    Docker image)."""
    config = yaml.safe_load(source.read_text()) or {}
    return {"storage": {"postgres": {"postgres_url": {"env": STORAGE_ENV}}}, **config}
