"""Generated Alembic projects of N linear revisions with realistic DDL, for the benchmarks.

Each project exists twice: with this project's env.py (lock, timeouts, audit, snapshots),
run by `migrate`, and as `alembic init` makes it (generic template), run by plain `alembic`.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "bench"


def _step(i: int) -> tuple[str, str]:
    """(upgrade, downgrade) of revision i: create table, add column, index, foreign key."""
    name = f"t{i // 4:04d}"
    kind = i % 4
    if kind == 0:
        up = (
            f'    op.create_table("{name}", sa.Column("id", sa.Integer, primary_key=True), '
            f'sa.Column("name", sa.Text, nullable=False), schema="{SCHEMA}")'
        )
        down = f'    op.drop_table("{name}", schema="{SCHEMA}")'
    elif kind == 1:
        up = f'    op.add_column("{name}", sa.Column("created_at", sa.DateTime), schema="{SCHEMA}")'
        down = f'    op.drop_column("{name}", "created_at", schema="{SCHEMA}")'
    elif kind == 2:
        up = f'    op.create_index("ix_{name}_name", "{name}", ["name"], schema="{SCHEMA}")'
        down = f'    op.drop_index("ix_{name}_name", table_name="{name}", schema="{SCHEMA}")'
    else:
        prev = f"t{max(i // 4 - 1, 0):04d}"
        up = (
            f'    op.add_column("{name}", sa.Column("parent_id", sa.Integer, '
            f'sa.ForeignKey("{SCHEMA}.{prev}.id")), schema="{SCHEMA}")'
        )
        down = f'    op.drop_column("{name}", "parent_id", schema="{SCHEMA}")'
    return up, down


def _revision(i: int) -> str:
    rev = f"{i + 1:012x}"
    down = repr(f"{i:012x}") if i else "None"
    labels = repr((SCHEMA,)) if i == 0 else "None"
    up, downgrade = _step(i)
    create = '    op.execute("CREATE SCHEMA IF NOT EXISTS bench")\n' if i == 0 else ""
    drop = '\n    op.execute("DROP SCHEMA IF EXISTS bench")' if i == 0 else ""
    return (
        f'"""step {i + 1}\n\nRevision ID: {rev}\nCreate Date: 2024-01-01 00:00:00\n"""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "{rev}"\ndown_revision = {down}\nbranch_labels = {labels}\n'
        "depends_on = None\n\n\n"
        f"def upgrade():\n{create}{up}\n\n\ndef downgrade():\n{downgrade}{drop}\n"
    )


def _vanilla(root: Path) -> Path:
    """What `alembic init` makes (its generic template: env.py, alembic.ini with logging),
    changed only where every real project changes it: the URL comes from the environment,
    and each revision commits on its own, as ours does."""
    from alembic import command
    from alembic.config import Config

    ini = root / "alembic.ini"
    with contextlib.redirect_stdout(io.StringIO()):  # its "Generating ..." lines
        command.init(Config(str(ini)), str(root / "migrations"), template="generic")
    env = root / "migrations" / "env.py"
    text = env.read_text()
    for old, new in (
        (
            "config = context.config\n",
            "config = context.config\n"
            'config.set_main_option("sqlalchemy.url", os.environ["BENCH_URL"])\n',
        ),
        (
            "from logging.config import fileConfig\n",
            "import os\nfrom logging.config import fileConfig\n",
        ),
        ("literal_binds=True,\n", "literal_binds=True,\n        transaction_per_migration=True,\n"),
        (
            "connection=connection, target_metadata=target_metadata\n",
            "connection=connection, target_metadata=target_metadata,\n"
            "            transaction_per_migration=True,\n",
        ),
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    env.write_text(text)
    return root / "migrations" / "versions"


def make_project(root: Path, revisions: int, *, vanilla: bool) -> Path:
    """Write the project under ``root``; returns its alembic.ini."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    if vanilla:
        versions = _vanilla(root)
    else:
        versions = root / "migrations" / "versions" / SCHEMA
        versions.mkdir(parents=True)
        (root / "migrations" / "env.py").write_text((REPO / "migrations" / "env.py").read_text())
        shutil.copy(REPO / "migrations" / "script.py.mako", root / "migrations")
        (root / "alembic.ini").write_text(
            "[alembic]\nscript_location = %(here)s/migrations\npath_separator = newline\n"
            f"version_locations = %(here)s/migrations/versions/{SCHEMA}\n"
            "migrate_config = %(here)s/migrate.toml\n"
        )
        shutil.copy(REPO / "migrate.toml", root / "migrate.toml")
        shutil.copy(REPO / "workspace.yaml", root / "workspace.yaml")
    for i in range(revisions):
        (versions / f"{i + 1:04d}_{i + 1:012x}_step.py").write_text(_revision(i))
    return root / "alembic.ini"
