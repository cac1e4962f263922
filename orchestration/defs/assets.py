"""One asset per schema per environment, each with a blocking `verify` check."""

from collections.abc import Iterator

import dagster as dg

from dagster_alembic import engine
from dagster_alembic.defs import lint_checks, metadata
from dagster_alembic.defs.resource import MigrationResource
from dagster_alembic.defs.specs import ProjectSpecs, SchemaAssetSpec


def pool(env: str) -> str:
    """One migration step at a time per target database (the engine's lock stays behind
    it): a safety rule, not presentation, so not the translator's to change."""
    return f"migrate_{env}"


def build_schema_asset(item: SchemaAssetSpec, resource_key: str) -> dg.AssetsDefinition:
    spec, env, schema = item.asset, item.props.env, item.props.schema.schema

    @dg.multi_asset(
        name=spec.key.to_python_identifier(),
        specs=[spec],
        pool=pool(env),
        required_resource_keys={resource_key},
    )
    def _upgrade_schema(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        migrations: MigrationResource = getattr(context.resources, resource_key)
        # Promotion carries what was verified, never more: head in the first environment,
        # else the revision the environment before is at and verified (logged, and in the
        # metadata: promoted_to, reason).
        with metadata.clear_errors():
            result, (promoted,) = migrations.promote(context, env, [schema])
        if not result.ok:
            raise metadata.failure(env, result)
        status = engine.status(migrations.project(), env, [schema])[0]
        return dg.MaterializeResult(
            asset_key=spec.key,
            metadata={
                **metadata.run_metadata(env, schema, result.steps, status),
                **metadata.promotion_metadata(promoted),
                **metadata.schema_history_metadata(env, schema, migrations.history(env)),
                **lint_checks.lint_metadata(
                    migrations.project(), env, schema, result.steps, status
                ),
            },
        )

    return _upgrade_schema


def build_verify_check(item: SchemaAssetSpec, resource_key: str) -> dg.AssetChecksDefinition:
    check, env, schema = item.check, item.props.env, item.props.schema.schema

    @dg.multi_asset_check(
        name=f"{check.asset_key.to_python_identifier()}_{check.name}",
        specs=[check],
        pool=pool(env),
        required_resource_keys={resource_key},
    )
    def _verify(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        migrations: MigrationResource = getattr(context.resources, resource_key)
        with metadata.clear_errors():
            (result,) = migrations.verify_promoted(context, env, [schema])
        yield dg.AssetCheckResult(
            asset_key=check.asset_key,
            check_name=check.name,
            passed=result.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=metadata.verify_metadata(result),
            description="; ".join(f.message for f in result.findings) or None,
        )
        # The failed evaluation is recorded (it gates automation); the step then fails with
        # the finding as its error, so the run page shows it, not only "1 blocking asset
        # check failed". The downstream environments are skipped as before.
        failure = metadata.verify_failure([result])
        if failure is not None:
            raise failure

    return _verify


def build_schema_assets(
    specs: ProjectSpecs, resource_key: str
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    assets = [build_schema_asset(item, resource_key) for item in specs.items]
    checks = [build_verify_check(item, resource_key) for item in specs.items]
    checks += lint_checks.build_lint_checks(specs, resource_key)  # non-blocking: lint_checks.py
    return assets, checks
