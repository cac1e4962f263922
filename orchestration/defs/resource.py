"""The engine as a Dagster resource: the project's alembic.ini and nothing else to configure."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestration import audit, engine
from orchestration.revisions import MigrationProject
from orchestration.settings import ProjectSettings, load_settings


def default_alembic_ini() -> str:
    """Like alembic: $ALEMBIC_CONFIG, else alembic.ini in the working directory."""
    return str(Path(os.environ.get("ALEMBIC_CONFIG") or "alembic.ini").resolve())


class MigrationResource(dg.ConfigurableResource):
    """Runs the project's migrations; database URLs come from the environment variables
    named in migrate.toml (DEV_DATABASE_URL, ...) or the embedded default, at run time."""

    alembic_ini: str = Field(
        default_factory=default_alembic_ini, description="path of the project's alembic.ini"
    )

    def settings(self) -> ProjectSettings:
        return load_settings(self.alembic_ini)

    def project(self) -> MigrationProject:
        return MigrationProject(self.settings())

    def upgrade(
        self,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        environment: str,
        schemas: list[str] | None,
        to: str | None = None,
    ) -> engine.RunResult:
        """Upgrade, logging each step as it ends; each step's row carries the SQL it ran."""
        return engine.upgrade(
            self.project(),
            environment,
            schemas=schemas,
            to=to,
            run_id=context.run.run_id,
            on_step=_step_logger(context),
        )

    def downgrade(
        self,
        context: dg.OpExecutionContext,
        environment: str,
        schema: str,
        to: str,
        allow_data_loss: bool = False,
    ) -> engine.RunResult:
        return engine.downgrade(
            self.project(),
            environment,
            schemas=[schema],
            to=to,
            allow_data_loss=allow_data_loss,
            run_id=context.run.run_id,
            on_step=_step_logger(context),
        )

    def history(self, environment: str, limit: int = 50) -> list[audit.AuditRow]:
        return engine.history(self.project(), environment, limit=limit)

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


def _step_logger(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
) -> Callable[[audit.AuditRow], None]:
    def log(row: audit.AuditRow) -> None:
        line = (
            f"{row.environment}/{row.schema_name} {row.operation} "
            f"{row.prev_alembic_version or 'base'} -> {row.alembic_version or 'base'} "
            f"{row.message or ''} ({row.duration_ms:.0f} ms)"
        )
        if row.success:
            context.log.info(line)
        else:
            context.log.error(f"{line}: {row.error}")

    return log
