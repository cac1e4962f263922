"""Alembic environment: plain `alembic`, the `migrate` CLI and Dagster all run through here.

The project's guarantees live in dagster_alembic.runtime so that every entry point gets them:
one runner per database (advisory lock), lock/statement timeouts, one transaction per
revision, and an audit row in alembic_version_history for every step, failed ones included.

Environment: `alembic -x env=staging ...` (default dev), or Config.attributes["environment"].
Alembic's connection-sharing recipe works: a Connection (inside a transaction of yours, it
runs within it and never commits it) or an Engine in Config.attributes["connection"].
"""

from logging.config import fileConfig

from alembic import context

from dagster_alembic import runtime

config = context.config

# Keep loggers created before us (Dagster's, the CLI's) alive: the template's bare
# fileConfig() would disable them. Callers that configure logging themselves say so.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Revisions are hand-written DDL; a project with models would pass its MetaData here, and
# any other context.configure() option next to it.
target_metadata = None

runtime.run_migrations(context, target_metadata=target_metadata)
