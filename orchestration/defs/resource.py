"""The engine as a Dagster resource: the project's alembic.ini and nothing else to configure."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from dagster_alembic import audit, engine, promotion
from dagster_alembic.revisions import MigrationProject
from dagster_alembic.settings import ProjectSettings, load_settings


def default_alembic_ini() -> str:
    """Like alembic: $ALEMBIC_CONFIG, else alembic.ini in the working directory."""
    return str(Path(os.environ.get("ALEMBIC_CONFIG") or "alembic.ini").resolve())


def config_path(path: str | Path) -> str:
    """The path as the resource's config shows it in the Launchpad: relative to the code
    location's working directory when it is under it (where runs start too), so no
    machine's absolute path becomes a default."""
    absolute = Path(path).resolve()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


class MigrationResource(dg.ConfigurableResource):
    """Runs the project's migrations; database URLs come from the environment variables
    named in migrate.toml (DEV_DATABASE_URL, ...) or the embedded default, at run time."""

    alembic_ini: str = Field(
        default_factory=lambda: os.environ.get("ALEMBIC_CONFIG") or "alembic.ini",
        description="path of the project's alembic.ini (relative: to the working directory)",
    )
    database_urls: dict[str, str] = Field(
        default={},
        description="URL of an environment's database, by environment name (give it as "
        "dg.EnvVar: the UI then shows the variable's name, never the URL); an environment "
        "not listed takes the variable its migrate.toml names",
    )

    _project: MigrationProject | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._project = None  # each run reads the project anew

    def settings(self) -> ProjectSettings:
        return load_settings(self.alembic_ini).with_urls(self.database_urls)

    def project(self) -> MigrationProject:
        """The project as this run read it: the revision files are read once per run
        (and process), not once for every call of every step."""
        if self._project is None:
            self._project = MigrationProject(self.settings())
        return self._project

    def upgrade(
        self,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        environment: str,
        schemas: list[str] | None,
        to: str | None = None,
    ) -> engine.RunResult:
        """Upgrade, logging each step as it ends; each step's row carries the SQL it ran."""
        with StepLog(context) as log:
            return engine.upgrade(
                self.project(),
                environment,
                schemas=schemas,
                to=to,
                run_id=context.run.run_id,
                on_step=log,
            )

    def promote(
        self,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        environment: str,
        schemas: list[str] | None,
    ) -> tuple[engine.RunResult, list[promotion.Promotion]]:
        """Upgrade as far as promotion allows: head in the first environment, else what the
        environment before is at and verified. Logs each schema's decision, then each step."""
        with StepLog(context) as log:
            return promotion.upgrade(
                self.project(),
                environment,
                schemas,
                run_id=context.run.run_id,
                on_step=log,
                on_plan=lambda p: context.log.info(p.reason),
            )

    def downgrade(
        self,
        context: dg.OpExecutionContext,
        environment: str,
        schema: str,
        to: str,
        allow_data_loss: bool = False,
    ) -> engine.RunResult:
        with StepLog(context) as log:
            return engine.downgrade(
                self.project(),
                environment,
                schemas=[schema],
                to=to,
                allow_data_loss=allow_data_loss,
                run_id=context.run.run_id,
                on_step=log,
            )

    def history(self, environment: str, limit: int = 50) -> list[audit.AuditRow]:
        return engine.history(self.settings(), environment, limit=limit)

    def verify(
        self,
        context: dg.OpExecutionContext | dg.AssetCheckExecutionContext,
        environment: str,
        schemas: list[str] | None,
        expect_head: bool = True,
    ) -> list[engine.VerifyResult]:
        return engine.verify(
            self.project(), environment, schemas, expect_head=expect_head, run_id=context.run.run_id
        )

    def verify_promoted(
        self,
        context: dg.OpExecutionContext | dg.AssetCheckExecutionContext,
        environment: str,
        schemas: list[str] | None,
    ) -> list[engine.VerifyResult]:
        """verify, expecting head in the first environment and the promotion target in the
        others: a staging that stopped where dev verified is not failing because a newer
        file exists."""
        return promotion.verify(self.project(), environment, schemas, run_id=context.run.run_id)


class StepLog:
    """Each step's line in the run's log, grouped: one Dagster event per second at most
    (each is a write to the event log: per step, they cost more than the steps), and a
    failed step at once. Leaving the ``with`` block logs what is left."""

    interval_seconds = 1.0

    def __init__(self, context: dg.OpExecutionContext | dg.AssetExecutionContext):
        self.context = context
        self.lines: list[str] = []
        self.last = time.monotonic()

    def __call__(self, row: audit.AuditRow) -> None:
        line = (
            f"{row.environment}/{row.schema_name} {row.operation} "
            f"{row.prev_alembic_version or 'base'} -> {row.alembic_version or 'base'} "
            f"{row.message or ''} ({row.duration_ms:.0f} ms)"
        )
        if not row.success:
            self.flush()
            self.context.log.error(f"{line}: {row.error}")
            return
        self.lines.append(line)
        if time.monotonic() - self.last >= self.interval_seconds:
            self.flush()

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()

    def flush(self) -> None:
        if self.lines:
            self.context.log.info("\n".join(self.lines))
            self.lines = []
        self.last = time.monotonic()
