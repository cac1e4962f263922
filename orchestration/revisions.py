"""The Alembic project seen as schemas: one folder, one branch, one schema each."""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import importlib.util
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from dagster_alembic import scan
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import ProjectSettings

if TYPE_CHECKING:  # Alembic is imported only by those who run it
    from alembic.script import Script


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
    file: str  # the file's path as listed (a Path for each of 1,000s costs a deploy ms)
    down_revisions: tuple[str, ...]
    depends_on: tuple[str, ...]
    create_date: str | None
    checksum: str  # sha256 of the file as read
    defines_verify: bool = False

    @property
    def path(self) -> Path:
        return Path(self.file)

    @classmethod
    def from_script(cls, script: Script, schema: str) -> Revision:
        """From Alembic's own Script, for plain `alembic` runs that have no project."""
        doc = (script.module.__doc__ or "") if script.module else ""
        found = scan.CREATE_DATE.search(doc)
        return cls(
            revision=script.revision,
            schema=schema,
            message=script.doc,
            file=str(script.path),
            down_revisions=_as_tuple(script.down_revision),
            depends_on=_as_tuple(script.dependencies),
            create_date=found.group(1) if found else None,
            checksum=file_checksum(script.path),
        )


@dataclass(frozen=True)
class SchemaStatus:
    """Where one schema stands in one database: its newest applied revision (None at
    base), the head of its files, and what is pending."""

    schema: str
    current: str | None
    head: str | None
    pending: tuple[Revision, ...]

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "current": self.current,
            "head": self.head,
            "at_head": self.at_head,
            "pending": [{"revision": r.revision, "message": r.message} for r in self.pending],
        }


class MigrationProject:
    """The revisions of one Alembic project, read and checked once, never imported.

    Alembic imports every revision module when it runs; reading them as text here keeps
    that to once per command, and lets a broken file fail with a clear message first.
    """

    def __init__(self, settings: ProjectSettings):
        self.settings = settings
        if not settings.histories:
            raise ConfigurationError(
                f"{settings.alembic_ini.name} names no folder of revisions: set "
                "script_location (its versions/ folder) or version_locations"
            )
        _check_folders_listed(settings)
        self._by_schema: dict[str, list[Revision]] = {h.schema: [] for h in settings.histories}
        files = self._read(settings)
        # The readings as the files say them (depends_on unresolved): what Alembic is told
        # in place of importing each module (lazyscript.py).
        self.files: tuple[scan.RevisionFile, ...] = tuple(files)
        self._by_id: dict[str, Revision] = {}
        labels = {label: f.schema for f in files for label in f.branch_labels}
        for f in files:
            assert f.revision is not None
            if f.revision in self._by_id:
                other = self._by_id[f.revision].path.name
                raise ConfigurationError(
                    f"revision {f.revision} is defined twice: {Path(f.path).name} and {other}"
                )
            self._by_id[f.revision] = Revision(
                revision=f.revision,
                schema=f.schema,
                message=f.message or "",
                file=f.path,
                down_revisions=f.down_revisions,
                depends_on=f.depends_on,
                create_date=f.create_date,
                checksum=f.checksum,
                defines_verify=f.defines_verify,
            )
        for revision in list(self._by_id.values()):
            self._check_links(revision, labels)
        self._check_acyclic()
        for schema in self._by_schema:
            revisions = self._in_order([r for r in self._by_id.values() if r.schema == schema])
            self._check_single_head(schema, revisions)
            self._by_schema[schema] = revisions

    @staticmethod
    def _read(settings: ProjectSettings) -> list[scan.RevisionFile]:
        files = scan.read_revision_files(settings.histories)
        for f in files:
            if f.error:
                raise ConfigurationError(f"revision file {f.path}: {f.error}")
        return files

    def _check_links(self, revision: Revision, labels: dict[str, str]) -> None:
        for down in revision.down_revisions:
            if down not in self._by_id:
                raise ConfigurationError(
                    f"{revision.path.name}: down_revision {down} is not a revision of this "
                    "project (a missing or renamed file?)"
                )
        resolved = []
        for dep in revision.depends_on:
            if dep in labels:  # a branch label: that schema's head
                resolved.append(dep)
                continue
            matches = [rid for rid in self._by_id if rid.startswith(dep)]
            if len(matches) != 1:
                raise ConfigurationError(
                    f"{revision.path.name}: depends_on {dep} names "
                    f"{'no' if not matches else 'more than one'} revision"
                )
            resolved.append(matches[0])
        if resolved != list(revision.depends_on):  # most name full ids: nothing to replace
            resolved_revision = dataclasses.replace(revision, depends_on=tuple(resolved))
            self._by_id[revision.revision] = resolved_revision

    def _check_acyclic(self) -> None:
        """Depth-first search with a stack of its own: no recursion limit on long chains."""
        state: dict[str, int] = {}  # 1 on the current path, 2 done
        for start in self._by_id:
            if state.get(start):
                continue
            state[start] = 1
            path, stack = [start], [iter(self._parents(start))]
            while stack:
                parent = next(stack[-1], None)
                if parent is None:
                    state[path.pop()] = 2
                    stack.pop()
                elif state.get(parent) == 1:
                    cycle = " -> ".join((*path[path.index(parent) :], parent))
                    raise ConfigurationError(f"revisions form a cycle: {cycle}")
                elif not state.get(parent):
                    state[parent] = 1
                    path.append(parent)
                    stack.append(iter(self._parents(parent)))

    def _parents(self, rid: str) -> tuple[str, ...]:
        r = self._by_id[rid]
        deps = tuple(d for d in r.depends_on if d in self._by_id)
        return r.down_revisions + deps

    def _in_order(self, revisions: list[Revision]) -> list[Revision]:
        """Base first: every revision after its down_revisions (file order breaks ties).

        Kahn's topological sort with a heap: O(N log N), so 1000 revisions cost nothing.
        """
        by_id = {r.revision: r for r in revisions}
        waiting = {r.revision: sum(d in by_id for d in r.down_revisions) for r in revisions}
        children: dict[str, list[str]] = {}
        for r in revisions:
            for d in r.down_revisions:
                if d in by_id:
                    children.setdefault(d, []).append(r.revision)
        name = {r.revision: os.path.basename(r.file) for r in revisions}
        ready = [(name[r.revision], r.revision) for r in revisions if not waiting[r.revision]]
        heapq.heapify(ready)
        done: list[Revision] = []
        while ready:
            _, rid = heapq.heappop(ready)
            done.append(by_id[rid])
            for child in children.get(rid, ()):
                waiting[child] -= 1
                if not waiting[child]:
                    heapq.heappush(ready, (name[child], child))
        return done  # complete: _check_acyclic ran first

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
                self._dependency_schema(dep)
                for r in revisions
                for dep in r.depends_on
                if self._dependency_schema(dep) != schema
            }
            for schema, revisions in self._by_schema.items()
        }

    def _dependency_schema(self, dep: str) -> str:
        return self._by_id[dep].schema if dep in self._by_id else dep  # id, or branch label

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
                todo.extend(self._parents(rev))
        return applied

    def current(self, schema: str, applied: set[str]) -> str | None:
        """The schema's newest applied revision, None at base."""
        done = [r.revision for r in self.revisions(schema) if r.revision in applied]
        return done[-1] if done else None

    def check_known(self, db_heads: tuple[str, ...] | list[str], environment: str) -> None:
        """A database ahead of the files (a revision file deleted or renamed, another branch
        checked out): where its schemas stand cannot be told, so nothing may move them."""
        unknown = [head for head in db_heads if head not in self._by_id]
        if unknown:
            raise ConfigurationError(
                f"the {environment} database is at revision {', '.join(unknown)}, which no "
                "revision file of this project defines (a file deleted or renamed, another "
                "branch checked out?): restore it first; nothing was changed"
            )

    def select_schemas(self, schemas: Iterable[str] | None) -> list[str]:
        """The schemas named (each checked: an unknown one is a ConfigurationError), in
        dependency order; every schema when none is named."""
        named = list(schemas or ())
        if not named:
            return list(self.schemas)
        for schema in named:
            self.check_schema(schema)
        return [s for s in self.schemas if s in named]

    def statuses(self, db_heads: tuple[str, ...], schemas: list[str]) -> list[SchemaStatus]:
        """Where each schema stands in a database whose version table holds ``db_heads``."""
        applied = self.applied(db_heads)
        return [
            SchemaStatus(
                schema,
                self.current(schema, applied),
                self.head(schema),
                tuple(r for r in self.revisions(schema) if r.revision not in applied),
            )
            for schema in schemas
        ]

    def lineage(self, revision: str | None) -> set[str]:
        """``revision`` and every revision of its schema below it (down_revisions)."""
        found: set[str] = set()
        todo = [revision] if revision else []
        while todo:
            rid = todo.pop()
            rev = self._by_id.get(rid)
            if rid in found or rev is None:
                continue
            found.add(rid)
            todo.extend(rev.down_revisions)
        return found

    def tips(self, schema: str, applied: set[str]) -> list[str]:
        """The schema's applied revisions no other applied one stands on: one, unless a
        merge was taken back (its parents both stand)."""
        standing = [r for r in self.revisions(schema) if r.revision in applied]
        below = {d for r in standing for d in r.down_revisions}
        return [r.revision for r in standing if r.revision not in below]

    def state_warnings(
        self, db_heads: tuple[str, ...] | list[str], environment: str, schemas: list[str]
    ) -> list[str]:
        """What `status` warns about a database: a revision no file defines (see
        check_known), a schema standing at several revisions (a merge taken back)."""
        warnings = []
        try:
            self.check_known(db_heads, environment)
        except ConfigurationError as ahead:
            warnings.append(str(ahead))
        applied = self.applied(db_heads)
        for schema in schemas:
            tips = self.tips(schema, applied)
            if len(tips) > 1:
                warnings.append(
                    f"{schema} stands at {len(tips)} revisions ({', '.join(tips)}), a merge "
                    f"taken back; shown as {self.current(schema, applied)}"
                )
        return warnings

    def revision(self, revision_id: str) -> Revision | None:
        return self._by_id.get(revision_id)

    def resolve(self, revision_ref: str) -> Revision:
        """A full or unique partial revision id, as Alembic accepts it, or a clear error."""
        if revision_ref in self._by_id:
            return self._by_id[revision_ref]
        matches = [rid for rid in self._by_id if rid.startswith(revision_ref)]
        if len(matches) == 1:
            return self._by_id[matches[0]]
        why = "matches several revisions" if matches else "no revision has that id"
        raise ConfigurationError(f"unknown revision {revision_ref!r}: {why}")

    def module(self, revision: Revision) -> ModuleType:
        """Import one revision module (for its verify hook) as Alembic's loader does: from
        its file, under the file name as module name, not entered in sys.modules. Through
        importlib directly: Alembic's loader (alembic.util.pyfiles) is not public API."""
        name = re.sub(r"\W", "_", revision.path.name)
        spec = importlib.util.spec_from_file_location(name, revision.path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {revision.path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def _check_folders_listed(settings: ProjectSettings) -> None:
    """In the folder-per-schema layout, a schema folder left out of version_locations would
    be silently ignored: refuse it."""
    parents = {h.folder.parent for h in settings.histories if len(settings.histories) > 1}
    listed = {h.folder for h in settings.histories}
    for parent in sorted(parents):
        for folder in sorted(parent.iterdir()):
            if folder.is_dir() and not folder.name.startswith((".", "_")) and folder not in listed:
                raise ConfigurationError(
                    f"schema folder {folder} is not in version_locations of "
                    f"{settings.alembic_ini.name}"
                )
