"""Alembic migrations for PostgreSQL, run, verified, promoted and audited through Dagster.

Layers, imports pointing one way:
  engine   (settings, urls, embedded, revisions, audit, runtime, engine): never imports dagster;
  dagster  (definitions): thin over the engine;
  cli      (cli): the engine for operators and CI, without a Dagster instance.
"""
