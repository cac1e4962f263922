"""The project's settings: alembic.ini plus migrate.toml, read once into plain values."""

from __future__ import annotations

import configparser
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dagster_alembic.errors import ConfigurationError

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
    # A URL given by the caller (the Dagster resource's config) instead of url_env's
    # variable. Never in repr: it may hold a password.
    url: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class History:
    """One folder of revision files (a version location) and the PostgreSQL schema its
    revisions manage: the folder's name, or what migrate.toml's [schemas] maps it to."""

    folder: Path
    schema: str


LINT_SEVERITIES = ("error", "warning", "off")


@dataclass(frozen=True)
class LintRules:
    """One level of migrate.toml's [lint]: a default severity (None: the level above
    decides) and squawk rule name -> "error" | "warning" | "off"."""

    default: str | None = None
    rules: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LintSettings:
    """migrate.toml's [lint] (every environment) and [lint.environments.<name>]."""

    base: LintRules = LintRules()  # no default named: lint.DEFAULT_SEVERITY
    environments: tuple[tuple[str, LintRules], ...] = ()

    def for_environment(self, name: str) -> LintRules:
        for env_name, rules in self.environments:
            if env_name == name:
                return rules
        return LintRules()


@dataclass(frozen=True)
class ProjectSettings:
    """Everything an entry point needs to know about the migration project."""

    alembic_ini: Path
    environments: tuple[EnvironmentSettings, ...]
    audit_schema: str = "public"
    lock_wait_timeout_seconds: float = 60.0
    # Alembic's version table (context.configure's version_table / version_table_schema):
    # status and verify read it without running env.py, and env.py is given it.
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    histories: tuple[History, ...] = ()
    lint: LintSettings = LintSettings()

    def schema_of(self, path: str | os.PathLike[str]) -> str:
        """The schema a revision file belongs to, from the folder it is in."""
        folder = Path(path).resolve().parent
        for history in self.histories:
            if history.folder == folder:
                return history.schema
        return folder.name

    @property
    def version_table_sql(self) -> str:
        """The version table as SQL names it (identifiers are checked plain names)."""
        table = f'"{self.version_table}"'
        return f'"{self.version_table_schema}".{table}' if self.version_table_schema else table

    @property
    def root(self) -> Path:
        return self.alembic_ini.parent

    @property
    def environment_names(self) -> tuple[str, ...]:
        return tuple(env.name for env in self.environments)

    def with_urls(
        self, urls: Mapping[str, str] = {}, variables: Mapping[str, str] = {}
    ) -> ProjectSettings:
        """These settings with, by environment name, a URL given (``urls``) or the variable
        to read it from (``variables``, read when used), in place of url_env's variable."""
        for name in (*urls, *variables):
            self.environment(name)  # an unknown environment is an error, not ignored
            if name in variables and not _VARIABLE.match(variables[name]):
                raise ConfigurationError(f"{variables[name]!r} is not a variable name")

        def given(env: EnvironmentSettings) -> EnvironmentSettings:
            if env.name in variables:
                env = replace(env, url_env=variables[env.name])
            return replace(env, url=urls[env.name]) if env.name in urls else env

        return replace(self, environments=tuple(given(env) for env in self.environments))

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


def find_alembic_ini_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where alembic.ini is looked for, as `alembic` does, whether or not it exists."""
    return Path(explicit or os.environ.get("ALEMBIC_CONFIG") or "alembic.ini").resolve()


def find_alembic_ini(explicit: str | os.PathLike[str] | None = None) -> Path:
    """alembic.ini as `alembic` finds it: -c/--config, then $ALEMBIC_CONFIG, then ./alembic.ini."""
    path = Path(explicit or os.environ.get("ALEMBIC_CONFIG") or "alembic.ini")
    if not path.is_file():
        raise ConfigurationError(
            f"no Alembic configuration at {path}: run from the project folder or pass -c/--config"
        )
    return path.resolve()


def _read_text(path: Path) -> str:
    """A configuration file's text, or one clear error (unreadable, not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None


# Options Alembic reads as paths: ConfigParser keeps an inline "# comment" in the value.
_PATH_OPTIONS = ("script_location", "version_locations", "prepend_sys_path", "migrate_config")
_INLINE_COMMENT = re.compile(r"\s#")


def _check_alembic_ini(ini: Path) -> str | None:
    """alembic.ini, read and checked as Alembic will use it: UTF-8, an [alembic] section,
    no inline comment in a path, a script_location and version_locations that exist.
    Returns its migrate_config, if it names one."""
    # Imported here: `migrate` answers "nothing to do" from cached settings, without Alembic.
    from alembic.config import Config
    from alembic.util import CommandError
    from alembic.util.pyfiles import coerce_resource_to_filename

    _read_text(ini)
    config = Config(str(ini))
    try:
        parser = config.file_config
        section = config.config_ini_section
        if not parser.has_section(section):
            raise ConfigurationError(f"{ini}: has no [{section}] section")
        for option in parser.options(section):  # each value as Alembic will interpolate it
            parser.get(section, option)
        for option in _PATH_OPTIONS:
            raw = parser.get(section, option, raw=True, fallback="")
            inline = _INLINE_COMMENT.search(raw)
            if inline:
                comment = raw[inline.start() :].strip()
                raise ConfigurationError(
                    f"{ini} [{section}] {option}: inline comment {comment!r} is read as part "
                    "of the value by Alembic: put comments on lines of their own"
                )
        script_location = config.get_alembic_option("script_location")
        if not script_location:
            raise ConfigurationError(f"{ini} [{section}]: no script_location")
        try:
            folder = coerce_resource_to_filename(script_location)
        except ImportError as exc:
            raise ConfigurationError(f"{ini} [{section}] script_location: {exc}") from None
        if not Path(folder).is_dir():
            raise ConfigurationError(f"{ini} [{section}] script_location: {folder} does not exist")
        for location in config.get_version_locations_list() or []:
            if not Path(location).is_dir():
                raise ConfigurationError(
                    f"{ini} [{section}] version_locations: {location} does not exist"
                )
        return config.get_main_option("migrate_config")
    except (configparser.Error, CommandError, ValueError) as exc:
        raise ConfigurationError(f"{ini}: {' '.join(str(exc).split())}") from None


def load_settings(alembic_ini: str | os.PathLike[str] | None = None) -> ProjectSettings:
    """Read alembic.ini and the migrate.toml it names (``migrate_config``), and check both:
    any mistake is one ConfigurationError, before anything connects."""
    ini = find_alembic_ini(alembic_ini)
    named = _check_alembic_ini(ini)
    toml_path = Path(named or ini.parent / "migrate.toml")
    if named and not toml_path.is_file():
        raise ConfigurationError(f"{ini}: migrate_config names {toml_path}, which does not exist")
    data: dict = {}
    if toml_path.is_file():
        try:
            data = tomllib.loads(_read_text(toml_path))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{toml_path}: {exc}") from None
    return settings_from_dict(ini, data, source=toml_path.name)


# --- migrate.toml, checked key by key ------------------------------------------------------

_SECTIONS = {
    "audit": {"schema"},
    "lock": {"wait_timeout_seconds"},
    "environments": set(),
    "schemas": set(),
    "lint": set(),  # squawk rule names: checked by _lint
    "version": {"table", "schema"},
}
_ENVIRONMENT_KEYS = {"url_env", "lock_timeout", "statement_timeout", "promote", "fleet"}
_FLEET_KEYS = {"databases", "query"}
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|min|h|d)?\s*$")
_UNIT_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_MS = 2_147_483_647  # PostgreSQL's limit for lock_timeout and statement_timeout


def parse_duration(value: str) -> int:
    """Milliseconds of a PostgreSQL duration as ``SET lock_timeout`` reads it ("5s",
    "500ms", "10min", "250" = ms); ValueError saying why not."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError('use a number and a unit: us, ms, s, min, h or d (e.g. "5s")')
    amount = float(match.group(1)) * _UNIT_MS[match.group(2) or "ms"]
    milliseconds = round(amount)
    if milliseconds > _MAX_MS:
        raise ValueError(f"out of range: at most {_MAX_MS} ms (about 24 days)")
    if amount > 0 and milliseconds == 0:
        raise ValueError('under 1 ms rounds to 0, which turns the timeout off (write "0")')
    return milliseconds


def _table_of(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where} must be a table")
    return value


def _known_keys(table: dict, known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigurationError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})"
            )


def _string(table: dict, key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigurationError(f"{where} {key}: must be a string, got {value!r}")
    return value


def _duration(table: dict, key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigurationError(
            f'{where} {key}: must be a string such as "5s", "500ms" or "10min", got {value!r}'
        )
    try:
        parse_duration(value)
    except ValueError as exc:
        raise ConfigurationError(
            f"{where} {key}: {value!r} is not a PostgreSQL duration: {exc}"
        ) from None
    return value


def _environment(name: str, values: object, source: str) -> EnvironmentSettings:
    where = f"{source} [environments.{name}]"
    if not isinstance(values, dict):
        raise ConfigurationError(f"{where} must be a table")
    check_identifier("environment", name)
    _known_keys(values, _ENVIRONMENT_KEYS, where)
    defaults = EnvironmentSettings(name=name, url_env=f"{name.upper()}_DATABASE_URL")
    url_env = _string(values, "url_env", where, defaults.url_env)
    if not _VARIABLE.match(url_env):
        raise ConfigurationError(f"{where} url_env: {url_env!r} is not a variable name")
    promote = _string(values, "promote", where, defaults.promote)
    if promote not in ("auto", "manual"):
        raise ConfigurationError(f"{where} promote: must be 'auto' or 'manual', got {promote!r}")
    fleet_where = f"{source} [environments.{name}.fleet]"
    fleet = _table_of(values, "fleet", fleet_where)
    _known_keys(fleet, _FLEET_KEYS, fleet_where)
    databases = fleet.get("databases", [])
    if not isinstance(databases, list) or not all(isinstance(d, str) for d in databases):
        raise ConfigurationError(
            f"{fleet_where} databases: must be a list of database names, got {databases!r}"
        )
    query = fleet.get("query")
    if query is not None and not isinstance(query, str):
        raise ConfigurationError(f"{fleet_where} query: must be a string, got {query!r}")
    return EnvironmentSettings(
        name=name,
        url_env=url_env,
        lock_timeout=_duration(values, "lock_timeout", where, defaults.lock_timeout),
        statement_timeout=_duration(values, "statement_timeout", where, defaults.statement_timeout),
        promote=promote,
        fleet_databases=tuple(check_identifier("fleet database", d) for d in databases),
        fleet_query=query or None,
    )


def settings_from_dict(ini: Path, data: dict, *, source: str = "migrate.toml") -> ProjectSettings:
    """Settings from migrate.toml's parsed content; unknown sections and keys, wrong types
    and out-of-range values are ConfigurationErrors naming ``source`` and the key."""
    for key in data:
        if key not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS))
            raise ConfigurationError(f"{source}: unknown section [{key}] (known: {known})")
    audit = _table_of(data, "audit", f"{source} [audit]")
    _known_keys(audit, _SECTIONS["audit"], f"{source} [audit]")
    lock = _table_of(data, "lock", f"{source} [lock]")
    _known_keys(lock, _SECTIONS["lock"], f"{source} [lock]")
    envs_data = _table_of(data, "environments", f"{source} [environments]")
    if "environments" in data and not envs_data:
        raise ConfigurationError(f"{source}: [environments] is empty: name at least one")
    if not envs_data:
        envs_data = {
            name: {"url_env": f"{name.upper()}_DATABASE_URL"} for name in DEFAULT_ENVIRONMENTS
        }
    environments = tuple(_environment(name, values, source) for name, values in envs_data.items())
    schema = _string(audit, "schema", f"{source} [audit]", "public")
    try:
        audit_schema = check_identifier("audit schema", schema)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source} [audit] schema: {exc}") from None
    lock_wait = lock.get("wait_timeout_seconds", 60)
    if (
        isinstance(lock_wait, bool)
        or not isinstance(lock_wait, int | float)
        or not math.isfinite(lock_wait)
        or lock_wait < 0
    ):
        raise ConfigurationError(
            f"{source} [lock] wait_timeout_seconds: must be a finite number of seconds >= 0, "
            f"got {lock_wait!r}"
        )
    mapping = _table_of(data, "schemas", f"{source} [schemas]")
    version = _table_of(data, "version", f"{source} [version]")
    _known_keys(version, _SECTIONS["version"], f"{source} [version]")
    try:
        version_table = check_identifier(
            "version table", _string(version, "table", f"{source} [version]", "alembic_version")
        )
        version_schema = version.get("schema")
        if version_schema is not None:
            version_schema = check_identifier(
                "version table schema", _string(version, "schema", f"{source} [version]", "")
            )
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source} [version]: {exc}") from None
    return ProjectSettings(
        alembic_ini=ini,
        environments=environments,
        audit_schema=audit_schema,
        lock_wait_timeout_seconds=float(lock_wait),
        version_table=version_table,
        version_table_schema=version_schema,
        histories=histories(ini, mapping, source),
        lint=_lint(data, source, environments),
    )


# --- [lint]: squawk rules per environment ---------------------------------------------------

_LINT_RULE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")


def _lint_rules(table: dict, where: str, nested: tuple[str, ...] = ()) -> LintRules:
    default, rules = None, []
    for key, value in table.items():
        if key in nested:
            continue
        if not isinstance(value, str) or value not in LINT_SEVERITIES:
            raise ConfigurationError(
                f'{where} {key}: must be "error", "warning" or "off", got {value!r}'
            )
        if key == "default":
            default = value
        elif _LINT_RULE.match(key):
            rules.append((key, value))
        else:
            raise ConfigurationError(
                f"{where}: {key!r} is not a squawk rule name (e.g. "
                "require-concurrent-index-creation) nor default"
            )
    return LintRules(default, tuple(rules))


def _lint(data: dict, source: str, environments: tuple[EnvironmentSettings, ...]) -> LintSettings:
    """[lint]: default and rule = severity for every environment; [lint.environments.<env>]:
    the same for one environment. Which names squawk knows is checked when lint runs."""
    where = f"{source} [lint]"
    table = _table_of(data, "lint", where)
    base = _lint_rules(table, where, nested=("environments",))
    known = [env.name for env in environments]
    per_environment = []
    for name, values in _table_of(table, "environments", f"{source} [lint.environments]").items():
        env_where = f"{source} [lint.environments.{name}]"
        if name not in known:
            raise ConfigurationError(
                f"{env_where}: no environment {name!r} in [environments] (known: "
                f"{', '.join(known)})"
            )
        if not isinstance(values, dict):
            raise ConfigurationError(f"{env_where} must be a table")
        per_environment.append((name, _lint_rules(values, env_where)))
    return LintSettings(base, tuple(per_environment))


# --- histories: which folder of revisions manages which schema ------------------------------

_ALEMBIC_DEFAULT_FOLDER = "versions"


def version_folders(ini: Path) -> list[Path]:
    """The folders Alembic reads revisions from: version_locations, else Alembic's own
    default, <script_location>/versions."""
    from alembic.config import Config
    from alembic.util import CommandError
    from alembic.util.pyfiles import coerce_resource_to_filename

    config = Config(str(ini))
    try:
        listed = config.get_version_locations_list()
        if listed:
            return [Path(p).resolve() for p in listed]
        script_location = config.get_alembic_option("script_location")
        if not script_location:
            return []
        return [(Path(coerce_resource_to_filename(script_location)) / "versions").resolve()]
    except (configparser.Error, CommandError, ValueError, ImportError) as exc:
        raise ConfigurationError(f"{ini}: {' '.join(str(exc).split())}") from None


def histories(ini: Path, mapping: dict, source: str = "migrate.toml") -> tuple[History, ...]:
    """Each version folder with its schema; ``mapping`` is migrate.toml's [schemas]:
    a folder (relative to alembic.ini's) = the PostgreSQL schema its history manages."""
    folders = version_folders(ini)
    by_folder: dict[Path, str] = {}
    for key, schema in mapping.items():
        folder = (ini.parent / key).resolve()
        if folder not in folders:
            listed = ", ".join(os.path.relpath(f, ini.parent) for f in folders) or "none"
            raise ConfigurationError(
                f"{source} [schemas] {key!r}: not a version folder of {ini.name} "
                f"(folders: {listed})"
            )
        if not isinstance(schema, str):
            raise ConfigurationError(f"{source} [schemas] {key!r}: must be a schema name")
        by_folder[folder] = _mapped(schema, f"{source} [schemas] {key!r}")
    found = []
    for folder in folders:
        schema = by_folder.get(folder)
        if schema is None:
            if folder.name == _ALEMBIC_DEFAULT_FOLDER:
                relative = os.path.relpath(folder, ini.parent)
                raise ConfigurationError(
                    f"{relative}/ holds a history but names no PostgreSQL schema: say which "
                    f'one it manages in migrate.toml, [schemas] "{relative}" = "public" '
                    "(`migrate init` writes it)"
                )
            schema = _mapped(folder.name, f"version folder {folder}")
        found.append(History(folder, schema))
    seen: dict[str, Path] = {}
    for history in found:
        if history.schema in seen:
            raise ConfigurationError(
                f"schema {history.schema!r} is managed by two folders, {seen[history.schema]} "
                f"and {history.folder}: one history per schema"
            )
        seen[history.schema] = history.folder
    return tuple(found)


def _mapped(schema: str, where: str) -> str:
    try:
        return check_identifier("schema", schema)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
