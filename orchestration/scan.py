"""Revision files read as text, never imported: cheap enough for a sensor tick, and a
broken file is reported as a value instead of breaking whoever reads it."""

from __future__ import annotations

import ast
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config

CREATE_DATE = re.compile(r"^Create Date:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class RevisionFile:
    path: str
    schema: str
    checksum: str
    revision: str | None = None
    message: str | None = None
    down_revisions: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    create_date: str | None = None
    defines_verify: bool = False  # a revision-level verify(connection) hook
    error: str | None = None


def version_dirs(alembic_ini: Path) -> list[Path]:
    """The schema folders alembic.ini lists in version_locations."""
    return [Path(p) for p in Config(str(alembic_ini)).get_version_locations_list() or []]


def list_files(dirs: list[Path]) -> list[tuple[str, str, os.stat_result]]:
    """(schema, path, stat) of every revision file, with os.scandir: no imports, no reads."""
    found = []
    for folder in dirs:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.endswith(".py") and not entry.name.startswith((".", "_")):
                found.append((folder.name, entry.path, entry.stat()))
    return found


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def read_revision_file(schema: str, path: str, data: bytes | None = None) -> RevisionFile:
    """Parse (not run) a revision file for its id, message and depends_on."""
    data = Path(path).read_bytes() if data is None else data
    checksum = hashlib.sha256(data).hexdigest()
    try:
        tree = ast.parse(data, filename=path)
    except SyntaxError as exc:
        return RevisionFile(path, schema, checksum, error=f"line {exc.lineno}: {exc.msg}")
    values: dict[str, object] = {}
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and value is not None:
            values[target.id] = _literal(value)
    revision = values.get("revision")
    if not isinstance(revision, str):
        return RevisionFile(path, schema, checksum, error='no `revision = "..."` assignment')
    if "upgrade" not in functions:
        return RevisionFile(path, schema, checksum, error="no upgrade() function")
    doc = ast.get_docstring(tree) or ""
    found = CREATE_DATE.search(doc)
    return RevisionFile(
        path,
        schema,
        checksum,
        revision=revision,
        message=doc.strip().splitlines()[0] if doc.strip() else None,
        down_revisions=_strings(values.get("down_revision")),
        depends_on=_strings(values.get("depends_on")),
        branch_labels=_strings(values.get("branch_labels")),
        create_date=found.group(1) if found else None,
        defines_verify="verify" in functions,
    )


def _strings(value: object) -> tuple[str, ...]:
    """A revision attribute (None, a string, or a sequence of strings) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def scan(alembic_ini: Path) -> list[RevisionFile]:
    return [
        read_revision_file(schema, path)
        for schema, path, _ in list_files(version_dirs(alembic_ini))
    ]


def schema_dependencies(files: list[RevisionFile]) -> dict[str, set[str]]:
    """schema -> other schemas its revisions name in depends_on (ids or branch labels)."""
    owner = {f.revision: f.schema for f in files if f.revision}
    graph: dict[str, set[str]] = {f.schema: set() for f in files}
    for f in files:
        for dep in f.depends_on:
            # a full id, a branch label (= schema name), or a unique id prefix
            upstream = owner.get(dep) or (dep if dep in graph else None)
            if upstream is None:
                matches = {s for rev, s in owner.items() if rev.startswith(dep)}
                upstream = matches.pop() if len(matches) == 1 else None
            if upstream and upstream != f.schema:
                graph[f.schema].add(upstream)
    return graph
