"""Dagster Components of this integration, as `dg list components` lists them.

This module is the `dagster_dg_cli.registry_modules` entry point of the package
(pyproject.toml): `dg` imports it and lists every Component class it exports.
"""

from dagster_alembic.components.alembic_migrations import AlembicMigrationsComponent

__all__ = ["AlembicMigrationsComponent"]
