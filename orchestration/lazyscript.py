"""Alembic's upgrade, importing only the revision modules that run.

``command.upgrade`` builds a ScriptDirectory whose revision map imports every revision
module to learn its revision, down_revision, branch_labels and depends_on: on a long
history, most of an everyday deploy's time. This project reads those four from each
file's text already (scan.py); here the revision map is built from that reading, and a
Script's module is imported only when Alembic reaches for it: the steps that will run,
all imported before the first of them runs (as Alembic imports every module before any).

Everything else is Alembic's own: ``EnvironmentContext(config, script, fn=...,
destination_rev=...)`` and ``script.run_env()``, as command.upgrade does, so env.py and
runtime.py (lock, timeouts, audit rows) run unchanged. Used only when the reading is what
the imports would give: every file Alembic lists in the version locations read by the
scan, each with its four names bound once to a literal (scan.RevisionFile.literal_ids).
Otherwise ``script_directory`` says None and the caller runs command.upgrade.

The private parts of Alembic relied on are all here, each pinned by
tests/test_lazyscript.py: ``ScriptDirectory._version_locations`` (where Alembic looks),
``ScriptDirectory._upgrade_revs`` (what command.upgrade asks for the steps) and
``alembic.util.load_python_file`` (how a revision module is imported).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from alembic import util as alembic_util
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import Revision as AlembicRevision
from alembic.script.revision import RevisionMap

from dagster_alembic.errors import ConfigurationError
from dagster_alembic.revisions import MigrationProject
from dagster_alembic.scan import RevisionFile

# The files Alembic takes as revisions when not `sourceless` (alembic.script.base).
_SOURCE_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")


class LazyScript(Script):
    """A Script told its ids by the scan; its module is imported on first use."""

    def __init__(self, reading: RevisionFile):
        assert reading.revision is not None and reading.literal_ids
        self.path = reading.path
        self.reading = reading
        self._module: ModuleType | None = None
        # What Script.__init__ passes on from the module's attributes.
        AlembicRevision.__init__(
            self,
            reading.revision,
            reading.down_revisions or None,
            branch_labels=reading.branch_labels,
            dependencies=reading.depends_on,
        )

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            path = Path(self.path)
            module = alembic_util.load_python_file(path.parent, path.name)
            _check_reading(module, self.reading)
            self._module = module
        return self._module

    @module.setter
    def module(self, value: ModuleType) -> None:
        self._module = value

    @property
    def imported(self) -> bool:
        return self._module is not None


def _ids(value: Any) -> tuple[str, ...]:
    return alembic_util.to_tuple(value, default=()) or ()


def _check_reading(module: ModuleType, reading: RevisionFile) -> None:
    """The module says what its text said (it cannot differ unless the file changed
    between the scan and the import): else nothing runs on a wrong revision map."""
    found = (
        getattr(module, "revision", None),
        _ids(getattr(module, "down_revision", None)),
        _ids(getattr(module, "branch_labels", None)),
        _ids(getattr(module, "depends_on", None)),
    )
    read = (reading.revision, reading.down_revisions, reading.branch_labels, reading.depends_on)
    if found != read:
        raise ConfigurationError(
            f"revision file {reading.path} changed while it was read (its revision, "
            "down_revision, branch_labels or depends_on): nothing was run for it"
        )


def _alembic_files(script: ScriptDirectory) -> list[str] | None:
    """The real paths of the files Alembic's revision map would import, in its order (each
    version location, file names sorted), or None where this does not mirror it."""
    if script.sourceless or script.recursive_version_locations:
        return None
    files: list[str] = []
    for folder in script._version_locations:  # private: pinned by tests/test_lazyscript.py
        if not folder.exists():
            continue
        real_folder = os.path.realpath(folder)  # once a folder: not a realpath per file
        entries = [e for e in os.scandir(folder) if not e.is_dir()]
        if any(e.is_symlink() for e in entries):
            return None  # Alembic imports a link's target under the target's name
        names = sorted(e.name for e in entries if _SOURCE_FILE.match(e.name))
        files.extend(os.path.join(real_folder, name) for name in names)
    if len(set(files)) != len(files):
        return None  # a folder listed twice: Alembic warns and skips the second
    return files


def readings_in_alembic_order(
    script: ScriptDirectory, project: MigrationProject
) -> list[RevisionFile] | None:
    """The project's readings of exactly the files Alembic would load, in its order, when
    each one can stand in for its import; else None."""
    files = _alembic_files(script)
    if files is None:
        return None
    folders: dict[str, str] = {}
    by_path: dict[str, RevisionFile] = {}
    for reading in project.files:
        folder, name = os.path.split(reading.path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        by_path[os.path.join(folders[folder], name)] = reading
    if len(by_path) != len(files):
        return None  # a file the scan skips (``_x.py``) that Alembic would import, or back
    ordered: list[RevisionFile] = []
    for path in files:
        found = by_path.get(path)
        if found is None or not found.literal_ids:
            return None
        ordered.append(found)
    return ordered


def script_directory(config: Config, project: MigrationProject) -> ScriptDirectory | None:
    """``ScriptDirectory.from_config(config)`` with its revision map built from the
    project's readings (no module imported), or None when they cannot stand in for it."""
    script = ScriptDirectory.from_config(config)
    readings = readings_in_alembic_order(script, project)
    if readings is None:
        return None
    scripts = [LazyScript(r) for r in readings]
    script.revision_map = RevisionMap(lambda: scripts)
    return script


def upgrade(config: Config, revision: str, script: ScriptDirectory, *, sql: bool = False) -> None:
    """``command.upgrade(config, revision, sql=sql)`` on ``script``: the same steps from the
    same EnvironmentContext and env.py; only the modules of those steps are imported.
    With ``sql`` (offline, as lint renders a revision), ``revision`` may be "start:end"."""
    starting_rev = None
    if ":" in revision:  # as command.upgrade reads it
        if not sql:
            raise ConfigurationError("a start:end range is for offline (--sql) mode only")
        starting_rev, revision = revision.split(":", 2)

    def steps(rev: Sequence[str], context: Any) -> list[Any]:
        found = script._upgrade_revs(revision, rev)  # type: ignore[arg-type]  # as command.upgrade
        for step in found:  # imported before any step runs, as Alembic's own map would
            step.revision.module  # noqa: B018
        return found

    with EnvironmentContext(
        config,
        script,
        fn=steps,
        as_sql=sql,
        starting_rev=starting_rev,
        destination_rev=revision,
        tag=None,
    ):
        script.run_env()
