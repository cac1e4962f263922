"""The project's settings: alembic.ini plus migrate.toml, read once into plain values."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config

from orchestration.errors import ConfigurationError

DEFAULT_ENVIRONMENTS = ("dev", "staging", "prod")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class EnvironmentSettings:
    """One environment (dev, staging, prod, ...) of the promotion path."""

    name: str
    url_env: str
    lock_timeout: str = "5s"
    statement_timeout: str = "10min"
    promote: str = "manual"
    # More databases on this environment's server that get the same migrations (tenants):
    # listed, and/or found by a query run on the environment's own database.
    fleet_databases: tuple[str, ...] = ()
    fleet_query: str | None = None


@dataclass(frozen=True)
class ProjectSettings:
    """Everything an entry point needs to know about the migration project."""

    alembic_ini: Path
    environments: tuple[EnvironmentSettings, ...]
    audit_schema: str = "public"
    lock_wait_timeout_seconds: float = 60.0

    @property
    def root(self) -> Path:
        return self.alembic_ini.parent

    @property
    def environment_names(self) -> tuple[str, ...]:
        return tuple(env.name for env in self.environments)

    def environment(self, name: str) -> EnvironmentSettings:
        for env in self.environments:
            if env.name == name:
                return env
        known = ", ".join(self.environment_names)
        raise ConfigurationError(f"unknown environment {name!r} (known: {known})")


def check_identifier(kind: str, name: str) -> str:
    """Schema and environment names reach SQL and file paths: only plain identifiers pass."""
    if not _IDENTIFIER.match(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits and underscores"
        )
    return name


def find_alembic_ini(explicit: str | os.PathLike[str] | None = None) -> Path:
    """alembic.ini as `alembic` finds it: -c/--config, then $ALEMBIC_CONFIG, then ./alembic.ini."""
    path = Path(explicit or os.environ.get("ALEMBIC_CONFIG") or "alembic.ini")
    if not path.is_file():
        raise ConfigurationError(
            f"no Alembic configuration at {path}: run from the project folder or pass -c/--config"
        )
    return path.resolve()


def load_settings(alembic_ini: str | os.PathLike[str] | None = None) -> ProjectSettings:
    """Read alembic.ini and the migrate.toml it names (``migrate_config``)."""
    ini = find_alembic_ini(alembic_ini)
    config = Config(str(ini))
    toml_path = Path(config.get_main_option("migrate_config") or ini.parent / "migrate.toml")
    data: dict = {}
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{toml_path}: {exc}") from None
    return settings_from_dict(ini, data)


def settings_from_dict(ini: Path, data: dict) -> ProjectSettings:
    envs_data = data.get("environments") or {
        name: {"url_env": f"{name.upper()}_DATABASE_URL"} for name in DEFAULT_ENVIRONMENTS
    }
    environments = []
    for name, values in envs_data.items():
        check_identifier("environment", name)
        values = dict(values)
        fleet = values.pop("fleet", {})
        try:
            environments.append(
                EnvironmentSettings(
                    name=name,
                    **{"url_env": f"{name.upper()}_DATABASE_URL", **values},
                    fleet_databases=tuple(
                        check_identifier("fleet database", d) for d in fleet.get("databases", [])
                    ),
                    fleet_query=fleet.get("query") or None,
                )
            )
        except TypeError as exc:
            raise ConfigurationError(f"migrate.toml [environments.{name}]: {exc}") from None
        if environments[-1].promote not in ("auto", "manual"):
            raise ConfigurationError(
                f"migrate.toml [environments.{name}]: promote must be 'auto' or 'manual'"
            )
    audit_schema = check_identifier("audit schema", data.get("audit", {}).get("schema", "public"))
    lock_wait = float(data.get("lock", {}).get("wait_timeout_seconds", 60))
    return ProjectSettings(
        alembic_ini=ini,
        environments=tuple(environments),
        audit_schema=audit_schema,
        lock_wait_timeout_seconds=lock_wait,
    )
