"""pytest-alembic's built-in tests in this project's own suite (issue 12, item 4).

They are pulled in the way pytest-alembic documents as the alternative to `--test-alembic`:
imported into a test module, where they use that module's `alembic_config` and
`alembic_engine` fixtures. `alembic_engine` is an Engine (pytest-alembic's documented
fixture) on a fresh database of the test server; env.py receives it in
`Config.attributes["connection"]`.

This project has one Alembic branch per PostgreSQL schema, so pytest-alembic's plain
`test_single_head_revision` (one head for the whole history) does not apply: each branch
must have one head instead.

The last class runs `test_model_definitions_match_ddl` on a real project adopted with
`migrate init` (tests/fixtures/full_stack_fastapi_template): its SQLModel models against the
DDL its revisions produce, through the env.py that `migrate init` wired.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Databases, Workspace, revision_file
from pytest_alembic import tests as builtin
from pytest_alembic.plugin.error import AlembicTestFailure
from pytest_alembic.runner import MigrationContext
from pytest_alembic.tests import test_up_down_consistency, test_upgrade

# pytest collects the built-in tests imported into this module's namespace (pytest-alembic's
# test_model_definitions_match_ddl only in the adopted project's class: these migrations
# are hand-written DDL with no models).
__all__ = ["test_up_down_consistency", "test_upgrade"]

FIXTURE = Path(__file__).parent / "fixtures" / "full_stack_fastapi_template"


@pytest.fixture
def alembic_config(workspace: Workspace) -> Config:
    """This project's alembic.ini (a copy, in the workspace), as a team would hand it over."""
    return Config(str(workspace.ini))


@pytest.fixture
def alembic_engine(databases: Databases) -> Iterator[sa.Engine]:
    """An Engine on a fresh database, not the workspace's dev database (DEV_DATABASE_URL):
    what is migrated must be the Engine's database, never the environment's."""
    # A pooled Engine, as a team's fixture would make it: a connection env.py used goes
    # back to the pool, session state and all.
    engine = sa.create_engine(databases.create("pytest_alembic"))
    yield engine
    engine.dispose()


def assert_single_head_per_branch(script: ScriptDirectory) -> dict[str, str]:
    """pytest-alembic's `test_single_head_revision`, per branch: every branch label of a
    base revision (one per schema) has exactly one head, and every head of the history is
    the head of one labelled branch. Returns {branch: head}."""
    labels = sorted(
        {label for base in script.get_bases() for label in script.get_revision(base).branch_labels}
    )
    if not labels:
        raise AlembicTestFailure("Expected a branch label on each base revision, found none")
    heads = {
        label: sorted(rev.revision for rev in script.revision_map.get_revisions(f"{label}@heads"))
        for label in labels
    }
    forked = {label: found for label, found in heads.items() if len(found) != 1}
    if forked:
        raise AlembicTestFailure(
            f"Expected 1 head revision per branch, found more in {', '.join(forked)}",
            context=[
                (f"Heads of branch {label}", "\n".join(found)) for label, found in forked.items()
            ],
        )
    single = {label: found[0] for label, found in heads.items()}
    unlabelled = set(script.get_heads()) - set(single.values())
    if unlabelled:
        raise AlembicTestFailure(
            "Heads that belong to no labelled branch",
            context=[("Heads", "\n".join(sorted(unlabelled)))],
        )
    return single


def test_single_head_revision_per_branch(alembic_runner: MigrationContext) -> None:
    script = alembic_runner.command_executor.script
    assert assert_single_head_per_branch(script) == {
        "analytics": ANALYTICS_HEAD,
        "ecommerce": ECOMMERCE_HEAD,
    }
    # pytest-alembic's own notion of the heads agrees: one per branch, two in all.
    assert sorted(alembic_runner.heads) == sorted([ANALYTICS_HEAD, ECOMMERCE_HEAD])


def test_a_second_head_in_one_branch_fails_the_per_branch_check(
    alembic_runner: MigrationContext, workspace: Workspace
) -> None:
    """The per-branch check is not vacuous: a revision that forks ecommerce fails it."""
    workspace.add_revision(
        "ecommerce",
        "2024_03_01_0900-aaaaaaaaaaaa_fork.py",
        revision_file("aaaaaaaaaaaa", "fac149d9b774", "    pass"),
    )
    script = ScriptDirectory.from_config(Config(str(workspace.ini)))
    with pytest.raises(AlembicTestFailure, match="1 head revision per branch") as failure:
        assert_single_head_per_branch(script)
    assert "aaaaaaaaaaaa" in str(failure.value.context)
    assert ECOMMERCE_HEAD in str(failure.value.context)


def test_the_engine_in_attributes_is_the_database_migrated(
    alembic_runner: MigrationContext, alembic_engine: sa.Engine, workspace: Workspace
) -> None:
    """pytest-alembic hands env.py an Engine: that database is migrated and audited; the
    environment's own database (DEV_DATABASE_URL) is not touched."""
    alembic_runner.migrate_up_to("heads", return_current=False)
    with alembic_engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert {"customers", "orders", "order_items"} <= set(
            inspector.get_table_names(schema="ecommerce")
        )
        assert set(inspector.get_table_names(schema="analytics"))
        heads = set(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))
        audited = conn.scalar(
            sa.text(
                "SELECT count(*) FROM alembic_version_history"
                " WHERE success AND operation = 'migration'"
            )
        )
        # The lock never outlives the run on a connection of the caller's pool (the
        # Engine's pool holds the connection env.py used; it is this one, or idle beside it).
        held = conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND d.datname = current_database()"
            )
        )
        assert held == 0
    assert heads == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert audited == 7  # every revision of both branches, one row each
    assert workspace.version_heads("dev") == set()
    assert workspace.tables("ecommerce", "dev") == set()
    assert workspace.audit("dev") == []


def test_a_downgrade_to_base_through_pytest_alembic_is_audited(
    alembic_runner: MigrationContext, alembic_engine: sa.Engine
) -> None:
    """pytest-alembic's migrate_down_to("base") is a downgrade like any other: every step
    reverted leaves its rollback row (Alembic reports the destination "base" as None, the
    same value as "no destination" for read-only commands)."""
    alembic_runner.migrate_up_to("heads", return_current=False)
    alembic_runner.migrate_down_to("base", return_current=False)
    with alembic_engine.connect() as conn:
        assert not set(sa.inspect(conn).get_table_names(schema="ecommerce"))
        rollbacks = conn.scalar(
            sa.text(
                "SELECT count(*) FROM alembic_version_history"
                " WHERE operation = 'rollback' AND success"
            )
        )
    assert rollbacks == 7


# --- a real project, adopted ------------------------------------------------------------

ADOPTED_SETTINGS = {
    # app/core/config.py of the template requires these (its team's .env would hold them).
    "PROJECT_NAME": "adopted",
    "POSTGRES_SERVER": "127.0.0.1",
    "POSTGRES_USER": "postgres",
    "FIRST_SUPERUSER": "admin@example.com",
    "FIRST_SUPERUSER_PASSWORD": "not-the-default",
}


def _has_uuid_ossp(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'")
            )
        )


class TestTheAdoptedProject:
    """test_model_definitions_match_ddl on fastapi/full-stack-fastapi-template's project
    after `migrate init`: its models (SQLModel.metadata, env.py's target_metadata) against
    the DDL of its five revisions, applied through the pipeline's env.py on an Engine."""

    @pytest.fixture
    def project(
        self, tmp_path: Path, databases: Databases, monkeypatch: pytest.MonkeyPatch
    ) -> Path:
        root = tmp_path / "backend"
        shutil.copytree(FIXTURE, root)
        for name, value in ADOPTED_SETTINGS.items():
            monkeypatch.setenv(name, value)
        # Never the environment's database: the Engine's is the one under test.
        monkeypatch.setenv("DEV_DATABASE_URL", databases.create("decoy").render_as_string(False))
        init = subprocess.run(
            [str(Path(sys.executable).parent / "migrate"), "init"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(root), os.environ.get("PYTHONPATH")])
                ),
            },
        )
        assert init.returncode == 0, init.stdout + init.stderr
        monkeypatch.chdir(root)  # alembic.ini's script_location is relative: app/alembic
        monkeypatch.syspath_prepend(str(root))  # env.py imports app.models, app.core.config
        # app.models, once imported, stays in sys.modules: SQLModel.metadata is a global of the
        # sqlmodel package, and importing the models a second time would define `user` twice.
        return root

    @pytest.fixture
    def alembic_config(self, project: Path) -> Config:
        return Config(str(project / "alembic.ini"))

    @pytest.fixture
    def alembic_engine(self, databases: Databases) -> Iterator[sa.Engine]:
        engine = sa.create_engine(databases.create("adopted"), poolclass=sa.NullPool)
        if not _has_uuid_ossp(engine):
            engine.dispose()
            pytest.skip("this server has no uuid-ossp extension (revision d98dd8ec85a3 needs it)")
        yield engine
        engine.dispose()

    test_model_definitions_match_ddl = staticmethod(builtin.test_model_definitions_match_ddl)
    test_up_down_consistency = staticmethod(builtin.test_up_down_consistency)
