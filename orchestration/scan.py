"""Revision files read as text, never imported: cheap enough for a sensor tick, and a
broken file is reported as a value instead of breaking whoever reads it."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dagster_alembic.settings import History

CREATE_DATE = re.compile(r"^Create Date:\s*(.+?)\s*$", re.MULTILINE)
# What Alembic can name on a command line and store in alembic_version (varchar(32)).
_REVISION_ID = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_RESERVED = {"base", "head", "heads"}


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
    # revision, down_revision, branch_labels and depends_on are what importing the file
    # gives (each bound once, at the top level, to a literal): Alembic may be told them
    # without the import (lazyscript.py)
    literal_ids: bool = False


def is_revision_file(name: str) -> bool:
    """A file Alembic loads as a revision (alembic.script.base's pattern when not
    sourceless): every *.py but __init__ and editor lock files (.#x.py). A helper module
    there (_helpers.py) is one too, for Alembic: it fails on it, so it is reported."""
    return name.endswith(".py") and not name.startswith((".#", "__init__"))


def list_files(histories: Iterable[History]) -> list[tuple[str, str, os.stat_result]]:
    """(schema, path, stat) of every revision file, with os.scandir: no imports, no reads."""
    found = []
    for folder, schema in ((h.folder, h.schema) for h in histories):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if is_revision_file(entry.name):
                found.append((schema, entry.path, entry.stat()))
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
        why = (
            "its `revision = ...` is not a plain string (revision ids are read from the "
            'text, never by importing: write `revision = "<id>"`)'
            if "revision" in values
            else 'no `revision = "..."` assignment'
        )
        return RevisionFile(path, schema, checksum, error=why)
    if not _REVISION_ID.match(revision) or revision in _RESERVED:
        return RevisionFile(
            path,
            schema,
            checksum,
            error=f"revision id {revision!r} is not usable: letters, digits and _ only, "
            "at most 32 (alembic_version's column), and not base, head or heads",
        )
    if "upgrade" not in functions:
        return RevisionFile(path, schema, checksum, error="no upgrade() function")
    doc = ast.get_docstring(tree) or ""
    found = CREATE_DATE.search(doc)
    literal_ids = _literal_ids(tree)
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
        defines_verify=_binds(tree, "verify"),
        literal_ids=literal_ids,
    )


def _binds(tree: ast.Module, name: str) -> bool:
    """Whether the module may bind ``name`` at its top level, in any way (def, async def,
    class, any assignment or import, inside if/try/for/with blocks too, or a star import):
    the verify hook is then looked for by importing the module, never skipped unseen."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
            pending += node.decorator_list  # a walrus there binds at the top level
            continue  # their bodies are scopes of their own
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name).partition(".")[0] == name:
                    return True
        if isinstance(node, ast.Name) and node.id == name and not isinstance(node.ctx, ast.Load):
            return True
        if isinstance(node, ast.Global | ast.Nonlocal) and name in node.names:
            return True
        pending += ast.iter_child_nodes(node)
    return False


_IDS = ("revision", "down_revision", "branch_labels", "depends_on")
_ID_VALUE = (str, type(None))


def _literal_ids(tree: ast.Module) -> bool:
    """Whether importing the module can only give the ids the text says: each of _IDS
    bound at most once anywhere in the module (down_revision exactly once, as Alembic
    requires it), that once a top-level assignment of None, a string or a list or tuple of
    strings; no star import, no module __getattr__."""
    bindings: dict[str, int] = dict.fromkeys(_IDS, 0)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names = [node.id]
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names = list(node.names)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(alias.name == "*" for alias in node.names):
                return False
            names = [(alias.asname or alias.name).partition(".")[0] for alias in node.names]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == "__getattr__" and node in tree.body:
                return False
            names = [node.name]
        for name in names:
            if name in bindings:
                bindings[name] += 1
    if any(count > 1 for count in bindings.values()) or not bindings["down_revision"]:
        return False
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in bindings:
            if value is None or not _is_id_literal(value):
                return False
            bindings[target.id] -= 1
    return not any(bindings.values())  # every binding was one of those assignments


def _is_id_literal(node: ast.expr) -> bool:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    if isinstance(value, list | tuple):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, _ID_VALUE)


def _strings(value: object) -> tuple[str, ...]:
    """A revision attribute (None, a string, or a sequence of strings) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def scan(histories: Iterable[History]) -> list[RevisionFile]:
    return read_revision_files(histories)


# --- a cache of readings, next to Python's own bytecode cache ----------------------------

CACHE_NAME = "migrate-scan.json"
# A reading is keyed by the sha256 of the file's bytes, so it cannot go stale; the format
# key drops every entry when RevisionFile changes shape.
_FIELDS = tuple(f.name for f in dataclasses.fields(RevisionFile))
_FORMAT = "5:" + ",".join(_FIELDS)  # 2: ids checked; 3: literal_ids; 4, 5: verify bound
_TUPLES = ("down_revisions", "depends_on", "branch_labels")  # JSON keeps them as lists


def read_revision_files(histories: Iterable[History]) -> list[RevisionFile]:
    """Every revision file of ``dirs``, read. Parsing is most of the cost (~0.1 ms a file),
    so readings are kept in ``__pycache__/migrate-scan.json`` of each folder, by checksum,
    and written like Python writes bytecode: not when sys.dont_write_bytecode is set."""
    files: list[RevisionFile] = []
    by_folder: dict[str, list[tuple[str, str]]] = {}
    for schema, path, _ in list_files(histories):
        by_folder.setdefault(os.path.dirname(path), []).append((schema, path))
    for folder, entries in by_folder.items():
        cache_path = os.path.join(folder, "__pycache__", CACHE_NAME)
        cached = _load_cache(cache_path)
        fresh: dict[str, dict] = {}
        for schema, path in entries:
            with open(path, "rb") as handle:
                data = handle.read()
            checksum = hashlib.sha256(data).hexdigest()
            known = cached.get(checksum)
            if known is not None and known["schema"] == schema:
                files.append(RevisionFile(**{**known, "path": path}))
                fresh[checksum] = known
                continue
            reading = read_revision_file(schema, path, data)
            if reading.error is None:
                fresh[checksum] = {name: getattr(reading, name) for name in _FIELDS}
            files.append(reading)
        if fresh.keys() != cached.keys() and not sys.dont_write_bytecode:
            _save_cache(cache_path, fresh)
    return files


def _load_cache(path: str) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("format") != _FORMAT:
        return {}
    entries = content.get("readings")
    if not isinstance(entries, dict):
        return {}
    return {
        checksum: {**entry, **{k: tuple(entry[k]) for k in _TUPLES}}
        for checksum, entry in entries.items()
        if isinstance(entry, dict) and entry.keys() == set(_FIELDS)
    }


def _save_cache(path: str, readings: dict[str, dict]) -> None:
    _save_json(path, {"format": _FORMAT, "readings": readings})


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


# --- the sensor's view: each file's stat, checksum and reading, kept beside the cache ------

INDEX_NAME = "migrate-files.json"
_INDEX_FORMAT = f"2:{_FORMAT}"  # 2: down_revisions kept


@dataclass(frozen=True)
class FileState:
    """One revision file as last seen: its stat, sha256, and revision id or error."""

    name: str
    mtime_ns: int
    size: int
    checksum: str
    revision: str | None
    error: str | None
    down_revisions: tuple[str, ...] = ()  # a schema's heads are told without reading it


def stat_digest(history: History) -> tuple[str, int]:
    """A digest of (name, mtime, size) of the folder's revision files, and their number:
    an equal digest means no file to read (as for any build tool: an edit changes mtime
    or size). In directory order, unsorted: a sensor's quiet tick is this loop, and a
    reordered listing only costs one reading of the index."""
    try:
        entries = os.scandir(history.folder)
    except FileNotFoundError:
        return "", 0
    with entries:
        rows = [
            f"{e.name}\0{(st := e.stat()).st_mtime_ns}\0{st.st_size}"
            for e in entries
            if is_revision_file(e.name)
        ]
    return hashlib.sha256("\n".join(rows).encode()).hexdigest(), len(rows)


def content_digest(checksums: dict[str, str]) -> str:
    """A digest of (name, sha256) of a folder's files: what the folder holds."""
    rows = sorted(f"{name}\0{sha}" for name, sha in checksums.items())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _state_dir(history: History, state_dir: str | None) -> tuple[str, bool]:
    """Where the sensor's per-file index lives, and whether to write it whatever
    sys.dont_write_bytecode says: a folder of its own (Dagster's storage), else the
    history's __pycache__, written like bytecode."""
    if state_dir is not None:
        return state_dir, True
    return os.path.join(str(history.folder), "__pycache__"), not sys.dont_write_bytecode


def folder_states(history: History, state_dir: str | None = None) -> dict[str, FileState]:
    """Every revision file of ``history``, by file name: files whose stat is unchanged since
    the index (``migrate-files.json`` in ``state_dir``) was written are not read again;
    the others are read (parsed, never imported) and the index rewritten."""
    folder, writable = _state_dir(history, state_dir)
    index_path = os.path.join(folder, INDEX_NAME)
    known = _load_index(index_path)
    states: dict[str, FileState] = {}
    changed = False
    for _, path, st in list_files([history]):
        name = os.path.basename(path)
        old = known.get(name)
        if old is not None and (old.mtime_ns, old.size) == (st.st_mtime_ns, st.st_size):
            states[name] = old
            continue
        reading = read_revision_file(history.schema, path)
        states[name] = FileState(
            name,
            st.st_mtime_ns,
            st.st_size,
            reading.checksum,
            reading.revision,
            reading.error,
            reading.down_revisions,
        )
        changed = True
    if (changed or states.keys() != known.keys()) and writable:
        _save_json(
            index_path,
            {
                "format": _INDEX_FORMAT,
                "files": [list(dataclasses.astuple(s)) for s in states.values()],
            },
        )
    return states


def _load_index(path: str) -> dict[str, FileState]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
        if content.get("format") != _INDEX_FORMAT:
            return {}
        states = {}
        for name, mtime_ns, size, checksum, revision, error, downs in content["files"]:
            states[name] = FileState(name, mtime_ns, size, checksum, revision, error, tuple(downs))
        return states
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def folder_contents(
    history: History, digest: str, state_dir: str | None = None
) -> dict[str, str] | None:
    """The folder's (name -> sha256) as it was when its content digest was ``digest``, if
    kept (``save_folder_contents``): what a sensor compares with to name what changed."""
    folder, _ = _state_dir(history, state_dir)
    path = os.path.join(folder, f"migrate-content-{digest[:32]}.json")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
        return content if isinstance(content, dict) else None
    except (OSError, ValueError):
        return None


def save_folder_contents(
    history: History, digest: str, checksums: dict[str, str], state_dir: str | None = None
) -> None:
    """Keep (name -> sha256) under its digest (immutable, so never stale); the newest few."""
    cache, writable = _state_dir(history, state_dir)
    if not writable:
        return
    _save_json(os.path.join(cache, f"migrate-content-{digest[:32]}.json"), checksums)
    with contextlib.suppress(OSError):
        kept = sorted(
            (e for e in os.scandir(cache) if e.name.startswith("migrate-content-")),
            key=lambda e: e.stat().st_mtime_ns,
            reverse=True,
        )
        for old in kept[8:]:
            os.unlink(old.path)


def _save_json(path: str, content: object) -> None:
    """Atomically (write, then rename), and silently: a read-only tree just has no cache."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
    except OSError:
        return
    try:
        os.chmod(temporary, stat.S_IMODE(os.stat(folder).st_mode) & 0o666)  # as its folder
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(content, out)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
