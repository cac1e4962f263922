"""`migrate init`: wire an existing Alembic project into the pipeline, changing no revision.

It reads the project as Alembic does (alembic.ini, script_location, version_locations or
Alembic's default versions/ folder), writes migrate.toml (environments, and the PostgreSQL
schema each history manages), and replaces env.py's closing offline/online dispatch with
one call to ``dagster_alembic.runtime.run_migrations``, carrying the team's own
``context.configure()`` options (target_metadata, include_object, version_table, ...).
Everything else in env.py stays. Running it again changes nothing.
"""

from __future__ import annotations

import ast
import builtins
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from alembic.config import Config
from alembic.util.pyfiles import coerce_resource_to_filename

from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import DEFAULT_ENVIRONMENTS, check_identifier, version_folders

CALL = "runtime.run_migrations("
_IMPORT = "from dagster_alembic import runtime"
_OLD_IMPORT = "from orchestration import runtime"

# Options the pipeline sets itself; the connection and URL come from migrate.toml.
_OURS = {
    "connection",
    "url",
    "dialect_name",
    "dialect_opts",
    "literal_binds",
    "transaction_per_migration",
    "as_sql",
    "output_buffer",
}


@dataclass
class InitResult:
    """What init did (or found already done), for people and for --json."""

    migrate_toml: Path
    env_py: Path
    histories: dict[str, str]  # folder (relative to alembic.ini) -> schema
    wrote: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)  # configure() options handed on
    notes: list[str] = field(default_factory=list)
    # configure(version_table=..., version_table_schema=...) as literals: migrate.toml's
    # [version] table / schema, which status and verify read without running env.py
    version: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "migrate_toml": str(self.migrate_toml),
            "env_py": str(self.env_py),
            "histories": self.histories,
            "wrote": self.wrote,
            "carried": self.carried,
            "notes": self.notes,
        }


def init(alembic_ini: Path, schema: str | None = None) -> InitResult:
    """Wire the project of ``alembic_ini`` in. ``schema``: the PostgreSQL schema a single
    history manages (default ``public``). Checks everything before writing anything."""
    if not alembic_ini.is_file():
        raise ConfigurationError(
            f"no Alembic configuration at {alembic_ini}: run `migrate init` in the project's "
            "folder (where alembic.ini is) or pass -c/--config"
        )
    config = Config(str(alembic_ini))
    script_location = config.get_alembic_option("script_location")
    if not script_location:
        raise ConfigurationError(f"{alembic_ini}: no script_location in [alembic]")
    script_dir = Path(coerce_resource_to_filename(script_location))
    env_py = script_dir / "env.py"
    if not env_py.is_file():
        raise ConfigurationError(f"{env_py} does not exist: is this an Alembic project?")
    root = alembic_ini.parent
    histories = _histories(alembic_ini, schema)
    toml_path = Path(config.get_main_option("migrate_config") or root / "migrate.toml")
    result = InitResult(toml_path, env_py, histories)

    env_text = env_py.read_text(encoding="utf-8")
    new_env = _wired_env_py(env_text, env_py, result)
    new_toml = _migrate_toml(toml_path, histories, result)

    if new_toml is not None:
        toml_path.write_text(new_toml, encoding="utf-8")
        result.wrote.append(str(toml_path))
    if new_env is not None:
        env_py.write_text(new_env, encoding="utf-8")
        result.wrote.append(str(env_py))
    return result


def _histories(alembic_ini: Path, schema: str | None) -> dict[str, str]:
    folders = version_folders(alembic_ini)
    if not folders:
        raise ConfigurationError(f"{alembic_ini}: no folder of revisions found")
    root = alembic_ini.parent
    found = {}
    for folder in folders:
        relative = os.path.relpath(folder, root)
        if len(folders) == 1:
            name = schema or "public"
        elif schema is not None:
            raise ConfigurationError(
                "--schema names the schema of a single history; this project has "
                f"{len(folders)} folders, each managing the schema it is named after"
            )
        else:
            name = folder.name
        try:
            found[relative] = check_identifier("schema", name)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{relative}: {exc}") from None
    return found


# --- migrate.toml --------------------------------------------------------------------------


def _migrate_toml(path: Path, histories: dict[str, str], result: InitResult) -> str | None:
    """The new text of migrate.toml, or None when it already says all it must."""
    mapping = {folder: s for folder, s in histories.items() if Path(folder).name != s}
    if not path.is_file():
        return _new_toml(mapping, result.version)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    version = _version_section(data, result)
    have = data.get("schemas", {})
    missing = {f: s for f, s in mapping.items() if f not in have}
    for folder, wanted in mapping.items():
        if folder in have and have[folder] != wanted:
            result.notes.append(
                f"{path.name} maps {folder} to {have[folder]!r}: kept (not {wanted!r})"
            )
    if not missing:
        return text.rstrip("\n") + f"\n\n{version}" if version else None
    if "schemas" in data:
        raise ConfigurationError(
            f"{path}: [schemas] does not map {', '.join(missing)}: add "
            + ", ".join(f'"{f}" = "{s}"' for f, s in missing.items())
        )
    lines = "\n".join(f'"{folder}" = "{s}"' for folder, s in missing.items())
    return (
        text.rstrip("\n") + f"\n\n{_SCHEMAS_HEADER}{lines}\n" + (f"\n{version}" if version else "")
    )


def _version_section(data: dict, result: InitResult) -> str:
    """A [version] section for what env.py's configure() named, unless migrate.toml has
    one (kept, with a note when it differs)."""
    if not result.version:
        return ""
    have = data.get("version")
    if have is not None:
        if {k: have.get(k) for k in result.version} != result.version:
            result.notes.append(f"migrate.toml [version] {have} kept (env.py: {result.version})")
        return ""
    lines = "".join(f'{k} = "{v}"\n' for k, v in result.version.items())
    return f"{_VERSION_HEADER}{lines}"


_VERSION_HEADER = """\
# Alembic's version table, as env.py's configure() names it: status and verify read it.
[version]
"""


_SCHEMAS_HEADER = """\
# Which PostgreSQL schema each folder of revisions manages (relative to alembic.ini),
# where the folder is not named after it.
[schemas]
"""


def _new_toml(mapping: dict[str, str], version: dict[str, str]) -> str:
    parts = [
        "# Settings of this migration project for `migrate`, Dagster and env.py (written by\n"
        "# `migrate init`; edit freely). Each environment names the variable that holds its\n"
        "# database URL; with none of them set, an embedded PostgreSQL is used.\n"
    ]
    if mapping:
        lines = "\n".join(f'"{folder}" = "{s}"' for folder, s in mapping.items())
        parts.append(f"{_SCHEMAS_HEADER}{lines}\n")
    parts.append("[audit]\n# Schema of the alembic_version_history table in each database.\n")
    parts.append('schema = "public"\n')
    parts.append("[lock]\nwait_timeout_seconds = 60\n")
    if version:
        parts.append(_VERSION_HEADER + "".join(f'{k} = "{v}"\n' for k, v in version.items()))
    parts.append(
        "# Environments in promotion order. promote: auto follows the environment before\n"
        "# once it verified; manual waits for a launched run.\n"
    )
    for name in DEFAULT_ENVIRONMENTS:
        promote = "manual" if name == "prod" else "auto"
        timeout = "3s" if name == "prod" else "5s"
        parts.append(
            f"[environments.{name}]\n"
            f'url_env = "{name.upper()}_DATABASE_URL"\n'
            f'lock_timeout = "{timeout}"\n'
            'statement_timeout = "30min"\n'
            f'promote = "{promote}"\n'
        )
    return "\n".join(parts)


# --- env.py --------------------------------------------------------------------------------


def _wired_env_py(text: str, path: Path, result: InitResult) -> str | None:
    """env.py with its closing dispatch replaced by the pipeline's call, or None when it
    already makes that call."""
    if CALL in text:
        if _OLD_IMPORT in text:  # wired by a release whose package was `orchestration`
            result.notes.append(f"env.py: `{_OLD_IMPORT}` is now `{_IMPORT}`")
            return text.replace(_OLD_IMPORT, _IMPORT)
        return None
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise ConfigurationError(f"{path}: line {exc.lineno}: {exc.msg}") from None
    dispatch = _dispatch(tree)
    if dispatch is None:
        raise ConfigurationError(
            f"{path}: found no closing `if context.is_offline_mode(): ... else: ...` to "
            "replace; end env.py with `from dagster_alembic import runtime` and "
            "`runtime.run_migrations(context, target_metadata=target_metadata)` yourself"
        )
    options = _configure_options(tree, dispatch, text, result)
    result.carried = [name for name, _ in options]
    arguments = "".join(f", {name}={source}" for name, source in options)
    lines = text.splitlines(keepends=True)
    wired = (
        "# Wired by `migrate init`: migrate, Dagster and plain `alembic` run the revisions here,\n"
        "# with the pipeline's lock, timeouts and audit rows; each environment's database URL\n"
        "# comes from migrate.toml. The run_migrations_* functions above are no longer called.\n"
        "from dagster_alembic import runtime  # noqa: E402\n"
        "\n"
        f"runtime.run_migrations(context{arguments})\n"
    )
    start, end = dispatch.lineno - 1, dispatch.end_lineno or dispatch.lineno
    new = "".join(lines[:start]) + wired + "".join(lines[end:])
    # The template's bare fileConfig() disables every logger created before it (Dagster's).
    bare = "fileConfig(config.config_file_name)"
    if bare in new:
        new = new.replace(
            bare, "fileConfig(config.config_file_name, disable_existing_loggers=False)"
        )
        result.notes.append(
            "env.py: fileConfig(...) keeps loggers created before it "
            "(disable_existing_loggers=False), or Dagster's would go silent"
        )
    return new


def _is_offline_test(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "is_offline_mode"
    )


def _dispatch(tree: ast.Module) -> ast.If | None:
    for node in tree.body:
        if isinstance(node, ast.If) and _is_offline_test(node.test):
            return node
    return None


def _online_function(tree: ast.Module, dispatch: ast.If) -> ast.FunctionDef | None:
    """The function the dispatch calls when online (the else branch)."""
    names = [
        n.value.func.id
        for n in dispatch.orelse
        if isinstance(n, ast.Expr)
        and isinstance(n.value, ast.Call)
        and isinstance(n.value.func, ast.Name)
    ]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names:
            return node  # type: ignore[return-value]
    return None


def _module_names(tree: ast.Module) -> set[str]:
    names = set(dir(builtins))
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _configure_options(
    tree: ast.Module, dispatch: ast.If, text: str, result: InitResult
) -> list[tuple[str, str]]:
    """The keyword options of the online context.configure() call that can be handed on at
    module level (their names are module-level names)."""
    online = _online_function(tree, dispatch)
    if online is None:
        result.notes.append("env.py: no online function found; no configure() option carried")
        return []
    calls = [
        n
        for n in ast.walk(online)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "configure"
    ]
    known = _module_names(tree)
    options: list[tuple[str, str]] = []
    for call in calls[:1]:
        for keyword in call.keywords:
            if keyword.arg is None or keyword.arg in _OURS:
                continue
            source = ast.get_source_segment(text, keyword.value) or ""
            used = {n.id for n in ast.walk(keyword.value) if isinstance(n, ast.Name)}
            if used - known:
                result.notes.append(
                    f"env.py: configure({keyword.arg}=...) uses {', '.join(sorted(used - known))}, "
                    "local to run_migrations_online(): not carried, pass it yourself"
                )
            elif keyword.arg == "on_version_apply" and ".listen" in source:
                result.notes.append(
                    f"env.py: configure(on_version_apply={source}) looks like Audit-Alembic's "
                    "listener: not carried (the pipeline writes the audit rows, in the same table)"
                )
            else:
                options.append((keyword.arg, source))
                if keyword.arg in _VERSION_OPTIONS:
                    _version_option(keyword, source, result)
    return options


# configure() option -> migrate.toml [version] key
_VERSION_OPTIONS = {"version_table": "table", "version_table_schema": "schema"}


def _version_option(keyword: ast.keyword, source: str, result: InitResult) -> None:
    try:
        value = ast.literal_eval(keyword.value)
    except ValueError:
        value = None
    key = _VERSION_OPTIONS[str(keyword.arg)]
    if isinstance(value, str):
        result.version[key] = value
    else:
        result.notes.append(
            f"env.py: configure({keyword.arg}={source}) is not a plain string: name the "
            f"table in migrate.toml ([version] {key} = ...), where status and verify read it"
        )
