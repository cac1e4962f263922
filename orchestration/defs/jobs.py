"""Ops over the engine, composed into the `migrate` and `rollback` jobs."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from orchestration import engine
from orchestration.defs import metadata
from orchestration.defs.resource import MigrationResource
from orchestration.defs.translator import SchemaAssetTranslator


class MigrateConfig(dg.Config):
    """Launchpad defaults need no typing: dev, every schema, to head."""

    environment: str = Field(default="dev", description="environment from migrate.toml")
    schemas: list[str] = Field(default=[], description="schemas to upgrade; empty means all")
    to: str = Field(default="head", description="head, or a revision id to upgrade to")


class RollbackConfig(dg.Config):
    environment: str = Field(default="dev", description="environment from migrate.toml")
    schema_name: str = Field(description="the schema (Alembic branch) to take back")
    to: str = Field(description="revision id to go back to, -N for N steps, or base")
    allow_data_loss: bool = Field(
        default=False, description="allow steps that drop tables or columns holding rows"
    )


def _report(
    translator: SchemaAssetTranslator,
    migrations: MigrationResource,
    environment: str,
    result: engine.RunResult,
) -> Iterator[dg.AssetMaterialization]:
    """Steps done by a job still show on the schema assets they changed; a failed run
    raises after them, its first line naming the revision and the cause."""
    where = {}
    if result.ok:
        where = {s.schema: s for s in engine.status(migrations.project(), environment)}
    for schema in dict.fromkeys(r.schema_name for r in result.steps if r.success):
        assert schema is not None
        yield dg.AssetMaterialization(
            asset_key=translator.get_asset_key(environment, schema),
            metadata=metadata.run_metadata(environment, schema, result.steps, where.get(schema)),
        )
    if not result.ok:
        raise metadata.failure(environment, result)


def build_jobs(translator: SchemaAssetTranslator) -> list[dg.JobDefinition]:
    @dg.op(description="Upgrade the selected schemas of an environment (default: all, to head).")
    def upgrade(
        context: dg.OpExecutionContext, config: MigrateConfig, migrations: MigrationResource
    ) -> Iterator[Any]:
        with metadata.clear_errors():
            result = migrations.upgrade(
                context, config.environment, config.schemas or None, config.to
            )
        yield from _report(translator, migrations, config.environment, result)
        yield dg.Output(
            {
                "environment": config.environment,
                "schemas": config.schemas,
                "expect_head": config.to == "head",
            },
            metadata={"steps": metadata.steps_table(result.steps)},
        )

    @dg.op(description="Revert revisions of one schema: to a revision, by -N, or to base.")
    def downgrade(
        context: dg.OpExecutionContext, config: RollbackConfig, migrations: MigrationResource
    ) -> Iterator[Any]:
        with metadata.clear_errors():  # a bad target, or data it would destroy
            result = migrations.downgrade(
                context, config.environment, config.schema_name, config.to, config.allow_data_loss
            )
        yield from _report(translator, migrations, config.environment, result)
        touched = sorted({r.schema_name for r in result.steps if r.schema_name})
        yield dg.Output(
            {
                "environment": config.environment,
                "schemas": touched or [config.schema_name],
                "expect_head": False,
            },
            metadata={"steps": metadata.steps_table(result.steps)},
        )

    @dg.op(description="Verify the schemas the previous step touched; fails on any error.")
    def verify(
        context: dg.OpExecutionContext, target: dict, migrations: MigrationResource
    ) -> Iterator[Any]:
        with metadata.clear_errors():
            results = migrations.verify(
                context, target["environment"], target["schemas"] or None, target["expect_head"]
            )
        for result in results:
            # Typed for materializations only, but Dagster records check evaluations from
            # ops too (tests/test_dagster.py asserts the check execution exists).
            context.log_event(
                dg.AssetCheckEvaluation(  # type: ignore[arg-type]
                    asset_key=translator.get_asset_key(result.environment, result.schema),
                    check_name="verify",
                    passed=result.ok,
                    severity=dg.AssetCheckSeverity.ERROR,
                    metadata=metadata.verify_metadata(result),
                )
            )
        failed = [r for r in results if not r.ok]
        if failed:
            first = failed[0]
            raise dg.Failure(
                description=f"verify failed for {first.environment}/{first.schema}: "
                + "; ".join(f.message for f in first.findings if f.severity == "error"),
            )
        environment = target["environment"]
        yield dg.Output(
            len(results),
            metadata=metadata.audit_history_metadata(environment, migrations.history(environment)),
        )

    @dg.job(description="Upgrade an environment (default dev, all schemas, to head), then verify.")
    def migrate() -> None:
        verify(upgrade())

    @dg.job(description="Downgrade one schema of an environment, then verify where it stands.")
    def rollback() -> None:
        verify(downgrade())

    return [migrate, rollback]
