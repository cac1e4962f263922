"""Fleet migrations: many databases on an environment's server that share its migrations."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import sqlalchemy as sa

from dagster_alembic import engine
from dagster_alembic.errors import ConfigurationError, MigrationError
from dagster_alembic.revisions import MigrationProject
from dagster_alembic.settings import check_identifier, load_settings

DONE, UP_TO_DATE, FAILED = "done", "up to date", "failed"


@dataclass
class TargetOutcome:
    """What happened to one fleet target; never an exception, so one failure stops nothing."""

    database: str
    status: str
    steps: int = 0
    error: str | None = None
    audit_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "database": self.database,
            "status": self.status,
            "steps": self.steps,
            "error": self.error,
            "audit_ids": self.audit_ids,
        }


def targets(project: MigrationProject, environment: str) -> list[str]:
    """The environment's fleet: databases listed in migrate.toml, then those its query finds."""
    env = project.settings.environment(environment)
    names = list(env.fleet_databases)
    if env.fleet_query:
        with engine.connect(project, environment) as (conn, _):
            try:
                names += [str(name) for name in conn.scalars(sa.text(env.fleet_query))]
            except sa.exc.SQLAlchemyError as exc:
                raise ConfigurationError(
                    f"migrate.toml [environments.{environment}.fleet] query failed: "
                    f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}"
                ) from None
    return [check_identifier("fleet database", name) for name in dict.fromkeys(names)]


def migrate_target(
    project: MigrationProject,
    environment: str,
    database: str,
    *,
    run_id: str | None = None,
    on_step: engine.StepCallback | None = None,
) -> TargetOutcome:
    """Upgrade one target to head and verify it: done, up to date, or failed (with why)."""
    try:
        result = engine.upgrade(
            project, environment, database=database, run_id=run_id, on_step=on_step
        )
        ids = [row.id for row in result.steps if row.id is not None]
        if not result.ok:
            return TargetOutcome(database, FAILED, len(result.steps), result.error, ids)
        checks = engine.verify(project, environment, database=database, run_id=run_id)
    except (ConfigurationError, MigrationError) as exc:  # unreachable, refused, locked
        return TargetOutcome(database, FAILED, error=str(exc))
    failed = [f.message for c in checks for f in c.findings if f.severity == "error"]
    ids += [c.audit_id for c in checks if c.audit_id is not None]
    if failed:
        return TargetOutcome(
            database, FAILED, len(result.steps), "verify: " + "; ".join(failed), ids
        )
    return TargetOutcome(
        database, DONE if result.steps else UP_TO_DATE, len(result.steps), None, ids
    )


# --- many targets at once: a pool of worker processes ------------------------------------
# Alembic is not thread-safe within a process: targets run in processes, each worker
# reading the project once and then migrating one target after another.

_worker_project: MigrationProject | None = None


def _start_worker(alembic_ini: str, urls: dict[str, str]) -> None:
    global _worker_project
    _worker_project = MigrationProject(load_settings(alembic_ini).with_urls(urls))


def _migrate_in_worker(environment: str, database: str, run_id: str | None) -> TargetOutcome:
    assert _worker_project is not None, "the pool's initializer reads the project"
    return migrate_target(_worker_project, environment, database, run_id=run_id)


def migrate_targets(
    project: MigrationProject,
    environment: str,
    databases: list[str],
    *,
    processes: int = 0,
    run_id: str | None = None,
) -> Iterator[TargetOutcome]:
    """Migrate ``databases`` over ``processes`` worker processes (0: one per core), and
    yield each outcome as it ends, in the order they end."""
    if not databases:
        return
    workers = min(processes or os.cpu_count() or 1, len(databases))
    if workers == 1:  # no process to start: the caller's process does the work
        for database in databases:
            yield migrate_target(project, environment, database, run_id=run_id)
        return
    # spawn: workers start from a clean interpreter, not a copy of the caller's state (its
    # threads, its open connections, e.g. Dagster's own storage).
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        # URLs the caller gave (the resource's config) go along: a worker reads the rest
        initargs=(
            str(project.settings.alembic_ini),
            {e.name: e.url for e in project.settings.environments if e.url is not None},
        ),
    )
    queued = iter(databases)
    running: dict[Future[TargetOutcome], str] = {}
    unstarted: list[str] = []  # handed out after the pool broke: never began

    def start_next() -> None:
        database = next(queued, None)
        if database is None:
            return
        try:
            running[pool.submit(_migrate_in_worker, environment, database, run_id)] = database
        except BrokenProcessPool:  # a worker died while another target was ending
            unstarted.append(database)

    try:
        # One target in flight per worker, the next handed out as one ends: stopped early
        # (a terminated run, the caller gone), the targets running finish and no other
        # begins. Submitting all at once would queue them past any stop.
        for _ in range(workers):
            start_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                database = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:  # a worker died (killed, out of memory)
                    yield TargetOutcome(database, FAILED, error="its worker process died")
                    continue  # the pool died with it: start nothing more
                except Exception as exc:  # a bug: reported for this target, the others go on
                    outcome = TargetOutcome(database, FAILED, error=f"{exc!r}")
                start_next()
                yield outcome
        for database in [*unstarted, *queued]:  # left when the pool died
            yield TargetOutcome(database, FAILED, error="not started: a worker process died")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
