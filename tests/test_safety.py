"""Issue 11: safety and a truthful record in the states teams reach every day.

Each test names the way the guard or the record could be bypassed, and proves against a
real PostgreSQL that it is not: data loss written as ordinary SQL, a check-then-act race,
a revision that ends its own transaction, Ctrl-C, a server restart, drift before an upgrade,
connections without timeouts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ECOMMERCE_HEAD, Workspace, revision_file

from orchestration import engine
from orchestration.errors import DataLossRefused, MigrationError
from orchestration.runtime import LOCK_KEY


def _two_tables(workspace: Workspace, downgrade: str, *, extra_upgrade: str = "") -> None:
    """Revision t2t000000001 on ecommerce's head: tables ecommerce.keep_a and keep_b."""
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-t2t000000001_two_tables.py",
        revision_file(
            "t2t000000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.keep_a (id int, note text, amount text)")\n'
            '    op.execute("CREATE TABLE ecommerce.keep_b (id int)")\n' + extra_upgrade,
            "\n".join(f"    op.execute({line!r})" for line in downgrade.splitlines()),
        ),
    )
    result = engine.upgrade(workspace.project(), "dev")
    assert result.ok, result.error


def _refused(workspace: Workspace) -> str:
    with pytest.raises(DataLossRefused) as refused:
        engine.downgrade(workspace.project(), "dev", schemas=["ecommerce"], to="-1")
    return str(refused.value)


def _nothing_changed(workspace: Workspace, rows_before: int) -> None:
    assert "t2t000000001" in workspace.version_heads()
    assert {"keep_a", "keep_b"} <= workspace.tables("ecommerce")
    assert len(workspace.audit()) == rows_before  # no rollback row: nothing was reverted


@pytest.mark.parametrize(
    ("downgrade", "fill", "named"),
    [
        # a list in one DROP: the filled table is the second one
        (
            "DROP TABLE ecommerce.keep_a, ecommerce.keep_b",
            "INSERT INTO ecommerce.keep_b VALUES (1), (2)",
            "table ecommerce.keep_b (2 row(s)",
        ),
        # several DROP COLUMNs in one ALTER: the filled column is the second one
        (
            "ALTER TABLE ecommerce.keep_a DROP COLUMN note, DROP COLUMN amount",
            "INSERT INTO ecommerce.keep_a (id, amount) VALUES (1, 'x'), (2, 'y'), (3, NULL)",
            "column ecommerce.keep_a.amount (2 row(s)",
        ),
        # an unqualified name under search_path
        (
            "SET search_path TO ecommerce, public\nDROP TABLE keep_b",
            "INSERT INTO ecommerce.keep_b VALUES (1)",
            "table ecommerce.keep_b (1 row(s)",
        ),
        ("TRUNCATE ecommerce.keep_b", "INSERT INTO ecommerce.keep_b VALUES (1), (2), (3)", "3 row"),
        (
            "DELETE FROM ecommerce.keep_b WHERE id > 1",
            "INSERT INTO ecommerce.keep_b VALUES (1), (2), (3)",
            "rows deleted from table ecommerce.keep_b (2 row(s)",
        ),
        (
            "ALTER TABLE ecommerce.keep_a ALTER COLUMN note TYPE int USING length(note)",
            "INSERT INTO ecommerce.keep_a (id, note) VALUES (1, 'abc')",
            "column ecommerce.keep_a.note (type text -> integer",
        ),
        # a table of another schema reached through CASCADE
        (
            "DROP SCHEMA side CASCADE",
            "INSERT INTO side.kept VALUES (1)",
            "table side.kept (1 row(s)",
        ),
    ],
    ids=["list", "columns", "search_path", "truncate", "delete", "type", "drop_schema_cascade"],
)
def test_the_data_loss_guard_sees_what_the_downgrade_removes(
    workspace: Workspace, downgrade: str, fill: str, named: str
):
    _two_tables(
        workspace,
        downgrade,
        extra_upgrade='    op.execute("CREATE SCHEMA side")\n'
        '    op.execute("CREATE TABLE side.kept (id int)")\n',
    )
    with workspace.connect() as conn:
        conn.execute(sa.text(fill))
        conn.commit()
    rows_before = len(workspace.audit())

    message = _refused(workspace)

    assert named in message and "t2t000000001" in message, message
    _nothing_changed(workspace, rows_before)


def test_a_downgrade_that_removes_only_empty_tables_goes_ahead(workspace: Workspace):
    _two_tables(workspace, "DROP TABLE ecommerce.keep_a, ecommerce.keep_b")

    result = engine.downgrade(workspace.project(), "dev", schemas=["ecommerce"], to="-1")

    assert result.ok, result.error
    assert not {"keep_a", "keep_b"} & workspace.tables("ecommerce")
    assert workspace.audit()[-1].operation == "rollback"


def test_a_destructive_statement_outside_a_transaction_is_refused_as_not_rehearsed(
    workspace: Workspace,
):
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-t2t000000001_two_tables.py",
        revision_file(
            "t2t000000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.keep_b (id int)")',
            "    with op.get_context().autocommit_block():\n"
            '        op.execute("DROP TABLE ecommerce.keep_b")',
        ),
    )
    assert engine.upgrade(workspace.project(), "dev").ok

    message = _refused(workspace)

    assert "statement outside a transaction: DROP TABLE ecommerce.keep_b" in message
    assert "not rehearsed" in message and "keep_b" in workspace.tables("ecommerce")


def test_the_example_downgrade_with_an_autocommit_block_needs_no_permission(
    workspace: Workspace,
):
    """ecommerce's head drops its indexes CONCURRENTLY in an autocommit block: no rows."""
    assert engine.upgrade(workspace.project(), "dev").ok

    result = engine.downgrade(workspace.project(), "dev", schemas=["ecommerce"], to="-1")

    assert result.ok, result.error
    assert ECOMMERCE_HEAD not in workspace.version_heads()


def test_an_upgrade_that_lands_before_the_downgrade_gets_the_lock_is_checked_too(
    workspace: Workspace,
):
    """The plan, the check and the downgrade happen under one hold of the lock: what a
    concurrent runner applied meanwhile is what gets checked, not an older plan."""
    assert engine.upgrade(workspace.project(), "dev").ok
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-1a7e00000001_late.py",
        revision_file(
            "1a7e00000001",
            ECOMMERCE_HEAD,
            '    op.execute("CREATE TABLE ecommerce.late (id int)")',
            '    op.execute("DROP TABLE ecommerce.late")',
        ),
    )
    holder = sa.create_engine(workspace.urls["dev"], poolclass=sa.NullPool)
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        conn.commit()
        downgrade = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "migrate"),
                "downgrade",
                "--schema",
                "ecommerce",
                "--to",
                "-1",
            ],
            cwd=workspace.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.5)  # the downgrade has read the files and waits for the lock
        # Another runner, holding the lock, applies the new revision and fills its table.
        conn.execute(sa.text("CREATE TABLE ecommerce.late (id int)"))
        conn.execute(sa.text("INSERT INTO ecommerce.late SELECT generate_series(1, 5)"))
        conn.execute(
            sa.text("UPDATE alembic_version SET version_num = '1a7e00000001' WHERE version_num = :h"),
            {"h": ECOMMERCE_HEAD},
        )
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        conn.commit()
        out, err = downgrade.communicate(timeout=60)
    holder.dispose()

    assert downgrade.returncode == 2, out + err
    assert "table ecommerce.late (5 row(s), reverting 1a7e00000001)" in err
    assert workspace.scalar("SELECT count(*) FROM ecommerce.late") == 5
