"""`migrate status`, a no-op `migrate upgrade` and `migrate verify` without Alembic or
SQLAlchemy.

The everyday deploy finds little or nothing to do, yet importing Alembic, SQLAlchemy and
every revision module costs most of a run. This module answers from what is already on
disk (the settings as `load_settings` last read them, the scan cache) and psycopg2 alone.
It only ever answers when its answer is the slow path's: whenever anything is unusual (a
setting, a URL, the lock held, the audit table to create or upgrade, text that masking
would change), it says ``None`` and the caller takes the full path, which does the same
checks again and prints its own message.

Kept identical to the slow path, and pinned by tests/test_fastpath.py: the settings
(exactly those load_settings returned for the same alembic.ini and migrate.toml bytes),
every revision file read and checked (MigrationProject, as the slow path builds it), the
connection (libpq options carry lock_timeout and statement_timeout, application_name),
the migration lock taken while the heads are read, the audit tables' layout (accepted only
when ensure_table found nothing to change for the same catalog), the output. Verify's
checks and audit row are verification.py's, the full path's own code, run on a psycopg2
cursor; its row is committed only once its output is known to print as the full path's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from dagster_alembic import errors
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.revisions import MigrationProject
from dagster_alembic.settings import ProjectSettings, find_alembic_ini_path

if TYPE_CHECKING:
    from dagster_alembic.verification import VerifyResult

# sessions.LOCK_KEY (pinned by a test): importing sessions would import SQLAlchemy.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"alembic-dagster-pipeline").digest()[:8], "big") >> 1
STORAGE_ENV = "DAGSTER_POSTGRES_URL"  # launcher.STORAGE_ENV: its password is masked too
ERROR_LIMIT = errors.ERROR_LIMIT  # sessions._ERROR_LIMIT
_CACHE_FORMAT = 2  # 2: the folders load_settings checked
_HERE = Path(__file__).resolve().parent


# --- settings, as load_settings last returned them for the same files ---------------------


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _code_fingerprint(*names: str) -> str:
    """The code whose results are cached: a new release never reuses an old answer."""
    digest = hashlib.sha256(str(_CACHE_FORMAT).encode())
    for name in names:
        digest.update((_sha(_HERE / name) or "-").encode())
    return digest.hexdigest()


def _cache_path(ini: Path) -> Path:
    # Beside alembic.ini, in a bytecode cache folder: ignored like __pycache__ everywhere.
    return ini.parent / "__pycache__" / f"migrate-fastpath-{ini.stem}.pickle"


@dataclass
class _Cache:
    key: dict[str, Any]  # what the settings were read from
    settings: ProjectSettings
    toml: str
    audit_probe: str | None = None  # audit._INSPECT, once the slow path has run here
    accepted: tuple[str, ...] = ()  # probe results ensure_table found nothing to do for
    # every folder load_settings checked exists (script_location, version_locations): one
    # gone since is its ConfigurationError, which only load_settings words
    folders: tuple[str, ...] = ()


def _key(ini: Path, toml: Path) -> dict[str, Any]:
    return {
        "ini": str(ini),
        # Alembic reads a relative script_location or version_locations against it
        "cwd": os.getcwd(),
        "ini_sha": _sha(ini),
        "toml": str(toml),
        "toml_sha": _sha(toml),
        "code": _code_fingerprint("settings.py", "audit.py", "catalog.py", "fastpath.py"),
    }


def _load(ini: Path) -> _Cache | None:
    try:
        with open(_cache_path(ini), "rb") as handle:
            # Same trust as the .pyc files beside it: written by this project's own runs.
            cache = pickle.load(handle)
    except Exception:
        return None
    if not isinstance(cache, _Cache) or cache.key != _key(ini, Path(cache.toml)):
        return None
    return cache


def _save(cache: _Cache) -> None:
    """Atomically, and like Python writes bytecode: not with sys.dont_write_bytecode."""
    if sys.dont_write_bytecode:
        return
    path = _cache_path(Path(cache.key["ini"]))
    try:
        path.parent.mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as out:
            pickle.dump(cache, out)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def remember_settings(settings: ProjectSettings) -> None:
    """After load_settings (Alembic imported): keep what it returned for these exact files
    (alembic.ini, and the migrate.toml it names or the one beside it, as load_settings)."""
    from alembic.config import Config
    from alembic.util.pyfiles import coerce_resource_to_filename

    ini = settings.alembic_ini
    try:
        config = Config(str(ini))
        named = config.get_main_option("migrate_config")
        script_location = coerce_resource_to_filename(
            config.get_alembic_option("script_location") or ""
        )
        locations = config.get_version_locations_list() or []
    except Exception:  # load_settings read it a moment ago; nothing to cache if not now
        return
    toml = Path(named or ini.parent / "migrate.toml")
    key = _key(ini, toml)
    old = _load(ini)
    if old is not None and old.key == key:
        return
    folders = (
        str(script_location),
        *map(str, locations),
        *(str(h.folder) for h in settings.histories),
    )
    _save(_Cache(key, settings, str(toml), folders=folders))


def cached(explicit: str | None) -> _Cache | None:
    """What was kept for the alembic.ini `migrate` finds (-c, $ALEMBIC_CONFIG, ./): the
    settings load_settings returned for the same alembic.ini and migrate.toml bytes, or
    None; the folders it checked must still be there."""
    cache = _load(find_alembic_ini_path(explicit))
    if cache is None or not all(os.path.isdir(folder) for folder in cache.folders):
        return None
    return cache


def learn_audit_probe(settings: ProjectSettings, probe: Any) -> None:
    """After the slow path ran in this process (SQLAlchemy already imported): record the
    audit tables' probe, and whether ensure_table would change nothing for ``probe`` (the
    catalog the fast path saw). Both are pure functions of the probe: next time the fast
    path may skip ensure_table exactly when it would have done nothing."""
    from dagster_alembic import audit

    cache = _load(settings.alembic_ini)
    if cache is None:
        return
    changed = cache.audit_probe != audit._INSPECT
    cache.audit_probe = audit._INSPECT
    if changed:
        cache.accepted = ()
    if probe is not None:
        try:
            found = audit._found(probe)
            history = found.get(audit.TABLE_NAME)
            layout = audit._classify(settings.audit_schema, history)
            snapshots = audit._snapshot_sql(
                settings.audit_schema, found.get(audit.catalog.SNAPSHOT_TABLE)
            )
            ddl, _ = audit._upgrade_sql(layout)
        except ConfigurationError:
            ddl, snapshots = "refused", ""
        if not ddl and not snapshots:
            fingerprint = _probe_fingerprint(settings, probe)
            if fingerprint not in cache.accepted:
                cache.accepted = (*cache.accepted, fingerprint)[-16:]
                changed = True
    if changed:
        _save(cache)


def _probe_fingerprint(settings: ProjectSettings, probe: Any) -> str:
    text = json.dumps([settings.audit_schema, probe], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the target database, for URLs simple enough to read without SQLAlchemy ---------------

_SIMPLE_URL = re.compile(
    r"^(?P<scheme>postgres|postgresql|postgresql\+psycopg2|postgresql\+psycopg)://"
    r"(?:(?P<user>[A-Za-z0-9_.\-]+)(?::(?P<password>[^@/?#]*))?@)?"
    r"(?P<host>[A-Za-z0-9_.\-]+)(?::(?P<port>\d{1,5}))?"
    r"/(?P<database>[A-Za-z0-9_.\-]+)$"
)
_TYPED_USERINFO = re.compile(r"://[^\s:/?#@]*:([^\s]*)@")  # urls._typed_passwords
_TYPED_PARAMETER = re.compile(r"[?&;\s]password=([^&#\s]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """The environment's database: how to connect, how it is shown, what must stay masked."""

    environment: str
    display: str  # as urls.display_url shows it
    connect: dict[str, Any]  # psycopg2.connect keywords, password included: never shown
    secrets: tuple[str, ...]  # every form of every password this run would mask


def _forms(password: str) -> set[str]:
    """urls._forms: the ways a password may be written."""
    found = set()
    for base in {password, unquote(password), unquote_plus(password)}:
        found |= {base, quote(base, safe=""), quote_plus(base), quote(base)}
    return {form for form in found if form}


def _typed(raw: str | None) -> list[str]:
    if not raw:
        return []
    found = [m.group(1) for m in _TYPED_USERINFO.finditer(raw)][:1]
    return found + [m.group(1) for m in _TYPED_PARAMETER.finditer(raw)]


def target(settings: ProjectSettings, environment: str) -> Target | None:
    """The environment's URL variable, parsed as targets.database_url would, or None when it
    is not plain ``postgresql://user[:password]@host[:port]/database`` (or unset: the
    embedded server is the slow path's)."""
    env = settings.environment(environment)
    raws = {e.url_env: os.environ.get(e.url_env) for e in settings.environments}
    raw = raws.get(env.url_env)
    if raw is None or any(v is not None and not v.strip() for v in raws.values()):
        return None
    match = _SIMPLE_URL.match(raw)
    if match is None:
        return None
    if match["port"] and not (
        match["port"] == str(int(match["port"])) and 0 < int(match["port"]) < 65536
    ):
        return None  # "05432" is shown as 5432, port 0 means the default: the full path's
    password = unquote(match["password"]) if match["password"] is not None else None
    secrets: set[str] = set()
    for value in (*raws.values(), os.environ.get(STORAGE_ENV)):
        for typed in _typed(value):
            secrets |= _forms(typed)
    if password:
        secrets |= _forms(password)
    user = match["user"]
    userinfo = f"{user}{':***' if password is not None else ''}@" if user else ""
    port = f":{match['port']}" if match["port"] else ""
    display = f"postgresql+psycopg2://{userinfo}{match['host']}{port}/{match['database']}"
    connect: dict[str, Any] = {"host": match["host"], "dbname": match["database"]}
    if match["port"]:
        connect["port"] = int(match["port"])
    if user:
        connect["user"] = user
    if password is not None:
        connect["password"] = password
    connect.update(
        application_name=application_name(environment),
        connect_timeout=10,
        options=session_options(env.lock_timeout, env.statement_timeout),
    )
    shown = Target(environment, display, connect, tuple(sorted(secrets, key=len, reverse=True)))
    # A password that is also a word of the URL (the user's name, say) is masked there too.
    return None if any(secret in display for secret in shown.secrets) else shown


def application_name(environment: str) -> str:
    """sessions.application_name (pinned by a test)."""
    import getpass
    import socket

    return f"migrate:{environment}:{getpass.getuser()}@{socket.gethostname()}"[:63]


def session_options(lock_timeout: str, statement_timeout: str) -> str:
    """sessions.session_options (pinned by a test)."""
    settings = {"lock_timeout": lock_timeout, "statement_timeout": statement_timeout}
    return " ".join(
        f"-c {name}={value.replace(' ', chr(92) + ' ')}" for name, value in settings.items()
    )


# urls' patterns find the word case-insensitively as `re` does (U+017F, long s, folds to s)
_PASSWORD_WORD = re.compile("password", re.IGNORECASE)


def needs_masking(value: Any, target: Target) -> bool:
    """Whether urls.redact could change ``value`` (text), or urls.redact_data any string of
    it (a document, before JSON escapes what it holds): then the slow path prints it."""
    if isinstance(value, dict):
        return any(needs_masking(k, target) or needs_masking(v, target) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(needs_masking(item, target) for item in value)
    if not isinstance(value, str):
        return False
    if _PASSWORD_WORD.search(value) or "://" in value:
        return True
    return any(secret in value for secret in target.secrets)


# --- the database: one session, psycopg2 alone --------------------------------------------


@dataclass(frozen=True)
class Database:
    heads: tuple[str, ...] | None  # None: no version table
    audit_probe: Any = None  # the audit tables as audit._INSPECT sees them (upgrade only)
    locked_out: bool = False  # another migration holds the lock


class Declined(Exception):
    """The database answered, but not as the fast path can: the full path takes over."""


class Unreachable(Exception):
    """The database cannot be reached; the message is the slow path's."""


def _connect(where: Target) -> Any:
    """psycopg2's connection to the target; Unreachable, in the full path's words."""
    import psycopg2

    try:
        return psycopg2.connect(**where.connect)
    except psycopg2.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise Unreachable(
            f"cannot connect to the {where.environment} database {where.display}: {first}"
        ) from None


def read_database(
    settings: ProjectSettings, where: Target, *, probe: str | None, lock: bool
) -> Database:
    """The version table's heads (and, for an upgrade, the audit tables' probe), read as
    an upgrade reads them: under the migration lock, which is tried once and released."""
    import psycopg2

    conn = _connect(where)
    try:
        return _read(conn, settings, probe=probe, lock=lock)
    except psycopg2.Error as exc:
        # a timeout, a missing privilege, anything the server refused: the full path
        # runs the same reads again and says what went wrong in its own words
        raise Declined(type(exc).__name__) from None
    finally:
        conn.close()


def _read(conn: Any, settings: ProjectSettings, *, probe: str | None, lock: bool) -> Database:
    import psycopg2

    conn.autocommit = True
    with conn.cursor() as cur:
        if lock:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            row = cur.fetchone()
            if not (row and row[0]):
                return Database(None, locked_out=True)
        try:
            cur.execute(f"SELECT version_num FROM {settings.version_table_sql}")
            heads: tuple[str, ...] | None = tuple(r[0] for r in cur.fetchall())
        except psycopg2.errors.UndefinedTable:
            heads = None
        found = None
        if probe is not None:
            cur.execute(f"SELECT {probe}", {"migrate_audit_schema": settings.audit_schema})
            found = cur.fetchone()[0]
        if lock:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        return Database(heads, found)


# --- answers ---------------------------------------------------------------------------------


def nothing_to_upgrade(
    project: MigrationProject, heads: tuple[str, ...], schemas: list[str] | None
) -> bool:
    """Whether Alembic's upgrade to the heads (of ``schemas``, or all) would run no step:
    every revision those heads need (depends_on across schemas included) is applied."""
    if not heads or any(project.revision(h) is None for h in heads):
        return False  # an empty table gets created, unknown heads get refused: slow path
    wanted = [project.head(s) for s in project.select_schemas(schemas)]
    needed = project.applied([h for h in wanted if h is not None])
    return needed <= project.applied(heads)


def audit_ready(cache: _Cache, probe: Any) -> bool:
    """Whether ensure_table found nothing to change for this very catalog before."""
    return _probe_fingerprint(cache.settings, probe) in cache.accepted


# --- verify --------------------------------------------------------------------------------


@contextlib.contextmanager
def session(where: Target) -> Iterator[Any]:
    """A cursor on the environment's database in one transaction, which the caller commits;
    rolled back if the block ends otherwise. A database error: Declined (nothing written)."""
    import psycopg2

    conn = _connect(where)
    try:
        with conn.cursor() as cur:
            yield cur
    except psycopg2.Error as exc:
        raise Declined(type(exc).__name__) from None
    finally:
        conn.close()  # without a commit, what was written is rolled back


class Failed(Exception):
    """A statement the full path runs too, word for word, failed (a lock or statement
    timeout, a missing privilege): the message is the full path's, and running it again
    there would only wait as long a second time."""


def _failure(environment: str, exc: Exception) -> Failed:
    """sessions.error_text's line for a driver error (masked by the caller), as
    engine.connect raises it."""
    from dagster_alembic import audit

    text = audit.printable(errors.driver_error_line(exc))[:ERROR_LIMIT]
    return Failed(f"{environment}: {text}")


@dataclass
class Verified:
    """verify's outcome on the fast path: the results, checked and not yet recorded
    (``record``); or None where the full path must verify, with the audit tables' probe
    (None when not read) for it to learn from."""

    results: list[VerifyResult] | None
    probe: Any = None
    layout: Any = None  # audit.Layout of the table the rows go to
    executed_by: str | None = None


def verify(
    cur: Any, cache: _Cache, project: MigrationProject, schemas: list[str], environment: str
) -> Verified:
    """engine.verify's checks of the first environment (head expected), on ``cur``. A
    driver error past the first statement (the full path's statements, word for word) is
    Failed, with the full path's message."""
    import psycopg2

    from dagster_alembic import audit, verification

    settings = cache.settings
    if any(r.defines_verify for s in schemas for r in project.revisions(s)):
        return Verified(None)  # a verify(connection) hook takes a SQLAlchemy connection
    assert cache.audit_probe is not None
    cur.execute(
        f"SELECT current_user, {cache.audit_probe}, to_regclass(%(version)s) IS NOT NULL",
        {"migrate_audit_schema": settings.audit_schema, "version": settings.version_table_sql},
    )
    executed_by, probe, versioned = cur.fetchone()
    if not audit_ready(cache, probe):
        return Verified(None, probe)  # ensure_table would change something
    layout = audit.probed_layout(settings.audit_schema, probe)
    try:
        heads: tuple[str, ...] = ()
        if versioned:
            cur.execute(f"SELECT version_num FROM {settings.version_table_sql}")
            heads = tuple(row[0] for row in cur.fetchall())
        results = []
        for st in project.statuses(heads, schemas):
            started = time.perf_counter()
            found = verification.findings(cur, project, st, heads, expect_head=True, layout=layout)
            results.append(verification.result(environment, st, found, started))
    except psycopg2.Error as exc:
        raise _failure(environment, exc) from None
    return Verified(results, probe, layout, executed_by)


def record(cur: Any, verified: Verified, environment: str) -> None:
    """The `verify` row of each result, as engine.verify writes them; not committed."""
    import psycopg2

    from dagster_alembic import audit, verification

    try:
        for result in verified.results or ():
            row = verification.audit_row(result, verified.executed_by, None)
            result.audit_id = audit.insert_with(cur, verified.layout, row).id
    except psycopg2.Error as exc:
        raise _failure(environment, exc) from None


def commit(cur: Any, environment: str) -> None:
    """The rows, committed once the answer is printed (as engine.verify's report)."""
    import psycopg2

    try:
        cur.connection.commit()
    except psycopg2.Error as exc:
        raise _failure(environment, exc) from None
