"""One asset per schema per environment, each with a blocking `verify` check."""

import dagster as dg

from orchestration import engine
from orchestration.defs import metadata
from orchestration.defs.resource import MigrationResource
from orchestration.defs.translator import SchemaAsset, SchemaAssetTranslator
from orchestration.settings import EnvironmentSettings


def build_schema_asset(
    env: EnvironmentSettings, schema: SchemaAsset, translator: SchemaAssetTranslator
) -> dg.AssetsDefinition:
    spec = translator.get_asset_spec(env, schema)

    @dg.multi_asset(
        name=spec.key.to_python_identifier(),
        specs=[spec],
        pool=translator.get_pool(env.name),
    )
    def _upgrade_schema(
        context: dg.AssetExecutionContext, migrations: MigrationResource
    ) -> dg.MaterializeResult:
        # Promotion carries what was verified, never more: head in the first environment,
        # else the revision the environment before is at and verified (logged, and in the
        # metadata: promoted_to, reason).
        with metadata.clear_errors():
            result, (promoted,) = migrations.promote(context, env.name, [schema.schema])
        if not result.ok:
            raise metadata.failure(env.name, result)
        status = engine.status(migrations.project(), env.name, [schema.schema])[0]
        return dg.MaterializeResult(
            asset_key=spec.key,
            metadata={
                **metadata.run_metadata(env.name, schema.schema, result.steps, status),
                **metadata.promotion_metadata(promoted),
            },
        )

    return _upgrade_schema


def build_verify_check(
    env: EnvironmentSettings, schema: SchemaAsset, translator: SchemaAssetTranslator
) -> dg.AssetChecksDefinition:
    key = translator.get_asset_key(env.name, schema.schema)

    @dg.asset_check(
        asset=key,
        name="verify",  # contract
        blocking=True,
        description=(
            f"{schema.schema} in {env.name} is where promotion takes it (the first "
            "environment: head; the others: the revision the environment before is at and "
            "verified), every applied revision file is "
            "unchanged since it was applied, the live catalog matches the snapshot taken when "
            "it was migrated (no drift, no INVALID index), and revision verify() hooks pass. "
            "Blocking: a failure stops the environments after this one in the same run."
        ),
        pool=translator.get_pool(env.name),
    )
    def _verify(
        context: dg.AssetCheckExecutionContext, migrations: MigrationResource
    ) -> dg.AssetCheckResult:
        with metadata.clear_errors():
            (result,) = migrations.verify_promoted(context, env.name, [schema.schema])
        return dg.AssetCheckResult(
            passed=result.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=metadata.verify_metadata(result),
            description="; ".join(f.message for f in result.findings) or None,
        )

    return _verify


def build_schema_assets(
    schemas: list[SchemaAsset], translator: SchemaAssetTranslator
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    assets, checks = [], []
    for env in translator.environments:
        for schema in schemas:
            assets.append(build_schema_asset(env, schema, translator))
            checks.append(build_verify_check(env, schema, translator))
    return assets, checks
