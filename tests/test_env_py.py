"""env.py as a good Alembic citizen: Alembic's own recipes and read-only commands.

Alembic documents sharing a connection through ``Config.attributes["connection"]``
(inside the caller's ``engine.begin()``), pytest-alembic hands an Engine there, and
``current``/``check``/``revision --autogenerate`` are expected to write nothing.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace

from dagster_alembic.errors import MigrationError


def _config(workspace: Workspace, connection: object = None) -> Config:
    config = Config(str(workspace.ini))
    config.attributes["configure_logger"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _has_table(workspace: Workspace, name: str) -> bool:
    return bool(workspace.scalar("SELECT to_regclass(:t) IS NOT NULL", t=name))


def test_the_connection_sharing_recipe_runs_in_the_callers_transaction(workspace: Workspace):
    engine = sa.create_engine(workspace.urls["dev"])
    with engine.begin() as connection:
        command.upgrade(_config(workspace, connection), "fac149d9b774")
        assert connection.in_transaction()  # not committed behind the caller's back
    engine.dispose()

    assert workspace.version_heads() == {"fac149d9b774"}
    assert len([r for r in workspace.audit() if r.operation == "migration"]) == 4


def test_an_autocommit_block_inside_the_callers_transaction_is_a_clear_error(
    workspace: Workspace,
):
    engine = sa.create_engine(workspace.urls["dev"])
    with pytest.raises(MigrationError) as failure:  # noqa: SIM117 (the order is the point)
        with engine.connect() as connection, connection.begin():
            command.upgrade(_config(workspace, connection), "ecommerce@head")
    engine.dispose()

    assert f"revision {ECOMMERCE_HEAD} runs statements outside a transaction" in str(failure.value)
    assert workspace.version_heads() == set()  # the caller's transaction rolled back


def test_a_callers_rollback_takes_everything_back_audit_rows_included(workspace: Workspace):
    engine = sa.create_engine(workspace.urls["dev"])
    with engine.connect() as connection:
        connection.execute(sa.text("CREATE TABLE public.callers_own_work (id int)"))
        command.upgrade(_config(workspace, connection), "fac149d9b774")
        assert connection.in_transaction()
        connection.rollback()
    engine.dispose()

    assert workspace.version_heads() == set()
    assert not _has_table(workspace, "public.callers_own_work")  # never committed for them
    assert not _has_table(workspace, "public.alembic_version_history")
    assert "customers" not in workspace.tables("ecommerce")


def test_an_engine_in_attributes_leaves_its_pooled_connection_clean(workspace: Workspace):
    """pytest-alembic's fixture: an Engine. Its pooled session keeps no lock, no timeouts."""
    engine = sa.create_engine(workspace.urls["dev"], pool_size=1, max_overflow=0)
    command.upgrade(_config(workspace, engine), "heads")
    with engine.connect() as pooled:  # the same session (one connection in the pool)
        locks = pooled.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
        )
        lock_timeout = pooled.scalar(sa.text("SHOW lock_timeout"))
    engine.dispose()

    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert locks == 0 and lock_timeout == "0"


def test_read_only_commands_write_nothing_and_take_no_lock(workspace: Workspace, capsys):
    config = _config(workspace)
    command.current(config)
    for args in (("current",), ("check",), ("history", "-i")):
        done = workspace.run("alembic", *args)
        assert "Traceback" not in done.stderr, done.stderr

    assert not _has_table(workspace, "public.alembic_version_history")
    assert not _has_table(workspace, "public.alembic_version")


def test_the_teams_configure_options_reach_alembic(workspace: Workspace):
    """target_metadata passed to runtime.run_migrations makes autogenerate and check work."""
    env_py = workspace.root / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "target_metadata = None",
            "import sqlalchemy as sa\n"
            "target_metadata = sa.MetaData()\n"
            'sa.Table("wished_for", target_metadata, sa.Column("id", sa.Integer, '
            'primary_key=True), schema="ecommerce")',
        )
    )
    config = _config(workspace)
    command.upgrade(config, "heads")
    versions = workspace.versions / "ecommerce"
    before = set(versions.iterdir())

    command.revision(config, message="wished for", autogenerate=True, head="ecommerce@head")

    (generated,) = set(versions.iterdir()) - before
    assert 'op.create_table(\n        "wished_for"' in generated.read_text() or (
        "op.create_table('wished_for'" in generated.read_text()
    )
