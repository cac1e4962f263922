"""Alembic migrations for PostgreSQL, run, verified, promoted and audited through Dagster.

Layers, imports pointing one way:
  engine   (settings, urls, targets, embedded, scan, revisions, audit, catalog, sqltext,
           sessions, recorder, dataloss, runtime, engine, promotion, fleet, adopt):
           never imports dagster;
  dagster  (definitions): thin over the engine;
  cli      (cli): the engine for operators and CI, without a Dagster instance.
"""
