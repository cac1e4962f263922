"""The Alembic project seen as schemas: one folder, one branch, one schema each."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError

from orchestration.errors import ConfigurationError
from orchestration.settings import ProjectSettings, check_identifier

_CREATE_DATE = re.compile(r"^Create Date:\s*(.+?)\s*$", re.MULTILINE)


def schema_of_path(path: str | Path) -> str:
    """A revision belongs to the schema named by its folder: versions/<schema>/<file>.py."""
    return Path(path).parent.name


def file_checksum(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _as_tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class Revision:
    """One revision file, as the rest of the project needs to know it."""

    revision: str
    schema: str
    message: str
    path: Path
    down_revisions: tuple[str, ...]
    depends_on: tuple[str, ...]
    create_date: str | None

    @classmethod
    def from_script(cls, script: Script) -> Revision:
        doc = (script.module.__doc__ or "") if script.module else ""
        found = _CREATE_DATE.search(doc)
        return cls(
            revision=script.revision,
            schema=schema_of_path(script.path),
            message=script.doc,
            path=Path(script.path),
            down_revisions=_as_tuple(script.down_revision),
            depends_on=_as_tuple(script.dependencies),
            create_date=found.group(1) if found else None,
        )


class MigrationProject:
    """The revisions of one Alembic project, loaded and checked once."""

    def __init__(self, settings: ProjectSettings):
        self.settings = settings
        self.script = load_script_directory(settings)
        self._by_schema: dict[str, list[Revision]] = {}
        self._by_id: dict[str, Revision] = {}
        for location in self.script.version_locations:
            schema = check_identifier("schema", Path(location).name)
            self._by_schema[schema] = []
        for script in self.script.walk_revisions("base", "heads"):
            revision = Revision.from_script(script)
            # depends_on may name a branch label or a partial id: keep full ids only.
            resolved = tuple(self.script.get_revision(d).revision for d in revision.depends_on)
            revision = dataclasses.replace(revision, depends_on=resolved)
            if revision.schema not in self._by_schema:
                raise ConfigurationError(f"{revision.path}: not in a schema folder of versions/")
            self._by_schema[revision.schema].append(revision)
            self._by_id[revision.revision] = revision
        for schema, revisions in self._by_schema.items():
            revisions.reverse()  # walk_revisions goes head -> base
            self._check_single_head(schema, revisions)

    def _check_single_head(self, schema: str, revisions: list[Revision]) -> None:
        parents = {down for r in revisions for down in r.down_revisions}
        heads = [r.revision for r in revisions if r.revision not in parents]
        if len(heads) > 1:
            raise ConfigurationError(
                f"schema {schema!r} has {len(heads)} heads ({', '.join(heads)}): "
                f"merge them with `alembic merge -m 'merge {schema}' {' '.join(heads)}`"
            )
        for r in revisions:
            foreign = [d for d in r.down_revisions if self._by_id[d].schema != schema]
            if foreign:
                raise ConfigurationError(
                    f"{r.path.name}: down_revision {foreign[0]} is in another schema; "
                    "use depends_on for a revision of another schema"
                )

    @cached_property
    def schemas(self) -> tuple[str, ...]:
        """Schema names, each after the schemas it depends on."""
        ordered: list[str] = []

        def visit(schema: str, trail: tuple[str, ...]) -> None:
            if schema in ordered:
                return
            if schema in trail:
                raise ConfigurationError(f"schemas depend on each other: {' -> '.join(trail)}")
            for upstream in sorted(self.schema_dependencies[schema]):
                visit(upstream, (*trail, schema))
            ordered.append(schema)

        for schema in self._by_schema:
            visit(schema, ())
        return tuple(ordered)

    @cached_property
    def schema_dependencies(self) -> dict[str, set[str]]:
        """schema -> the other schemas its revisions depend on (depends_on)."""
        return {
            schema: {
                self._by_id[dep].schema
                for r in revisions
                for dep in r.depends_on
                if dep in self._by_id and self._by_id[dep].schema != schema
            }
            for schema, revisions in self._by_schema.items()
        }

    def check_schema(self, schema: str) -> str:
        if schema not in self._by_schema:
            known = ", ".join(self._by_schema) or "none"
            raise ConfigurationError(f"unknown schema {schema!r} (known: {known})")
        return schema

    def revisions(self, schema: str) -> list[Revision]:
        """The schema's revisions, base first."""
        return list(self._by_schema[self.check_schema(schema)])

    def head(self, schema: str) -> str | None:
        revisions = self.revisions(schema)
        return revisions[-1].revision if revisions else None

    def applied(self, db_heads: tuple[str, ...] | list[str]) -> set[str]:
        """Every revision applied in a database whose version table holds ``db_heads``.

        Alembic stores only heads: a revision reached through another schema's depends_on
        is not stored on its own, so each schema's state is read from the ancestors.
        """
        applied: set[str] = set()
        todo = [head for head in db_heads if head in self._by_id]
        while todo:
            rev = todo.pop()
            if rev not in applied:
                applied.add(rev)
                r = self._by_id[rev]
                todo.extend(r.down_revisions + r.depends_on)
        return applied

    def current(self, schema: str, applied: set[str]) -> str | None:
        """The schema's newest applied revision, None at base."""
        done = [r.revision for r in self.revisions(schema) if r.revision in applied]
        return done[-1] if done else None

    def revision(self, revision_id: str) -> Revision | None:
        return self._by_id.get(revision_id)

    def resolve(self, revision_ref: str) -> Revision:
        """A full or partial revision id (as Alembic accepts it), or a clear error."""
        try:
            script = self.script.get_revision(revision_ref)
        except CommandError as exc:
            raise ConfigurationError(f"unknown revision {revision_ref!r}: {exc}") from None
        if script is None:
            raise ConfigurationError(f"unknown revision {revision_ref!r}")
        return self._by_id[script.revision]


def load_script_directory(settings: ProjectSettings) -> ScriptDirectory:
    """ScriptDirectory with every revision imported now, so a broken file fails here, clearly."""
    config = settings.alembic_config()
    try:
        script = ScriptDirectory.from_config(config)
        script.revision_map.heads  # noqa: B018 - loads every revision module
    except SyntaxError as exc:
        raise ConfigurationError(
            f"revision file {exc.filename} line {exc.lineno}: {exc.msg}"
        ) from None
    except CommandError as exc:
        raise ConfigurationError(f"revisions: {exc}") from None
    except Exception as exc:  # an import error or exception at module level in a revision
        raise ConfigurationError(f"revisions: {type(exc).__name__}: {exc}") from None
    _check_folders_listed(settings, script)
    return script


def _check_folders_listed(settings: ProjectSettings, script: ScriptDirectory) -> None:
    versions = settings.root / "migrations" / "versions"
    listed = {Path(p).resolve() for p in script.version_locations}
    for folder in sorted(versions.iterdir()) if versions.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith((".", "_")) and folder not in listed:
            raise ConfigurationError(
                f"schema folder {folder} is not in version_locations of {settings.alembic_ini.name}"
            )
