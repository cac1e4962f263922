"""Ops over the engine, composed into the `migrate` and `rollback` jobs.

Each job picks its environment from run config, but a pool is fixed when an op is
defined: so every environment has its own `upgrade`/`downgrade` and `verify` op, in the
pool `migrate_<env>` like that environment's assets, and a routing op (no database, no
pool) sends the run down the configured environment's branch; the others are skipped.
The run config keeps its shape: `ops: {upgrade: {config: {environment, schemas, to}}}`
and `ops: {downgrade: {config: {environment, schema_name, to, allow_data_loss}}}`; each
environment, schema and revision is a choice (a config Enum built from migrate.toml and the
revision files), so the Launchpad offers them and refuses anything else before a run starts.

`environment_sync` is built from the same ops: each promote = "auto" environment upgraded
behind the verify of the one before it, every environment verified (prod included).
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_alembic import engine, promotion
from dagster_alembic.defs import metadata
from dagster_alembic.defs.assets import pool
from dagster_alembic.defs.resource import MigrationResource
from dagster_alembic.defs.specs import Names, ProjectSpecs
from dagster_alembic.settings import EnvironmentSettings

# the tag Dagster reads a materialization's code version from (dagster.CODE_VERSION_TAG is
# not exported; DataVersion's tags are its public siblings)
CODE_VERSION_TAG = "dagster/code_version"

# How the verify step judges where a schema stands.
AS_PROMOTED = "as_promoted"  # head in the first environment, the promotion target after it
WHERE_IT_STANDS = "where_it_stands"  # after a rollback or an upgrade to a chosen revision


class MigrateConfig(dg.Config):
    """What the routing op receives; the Launchpad's schema (choices) is
    `launchpad_schemas`. Defaults need no typing: dev, every schema, to head."""

    environment: str = Field(default="dev", description="environment from migrate.toml")
    schemas: list[str] = Field(default=[], description="schemas to upgrade; empty means all")
    to: str = Field(
        default="head",
        description="head (after the first environment: as far as promotion allows, the "
        "revision the environment before is at and verified), or a revision id",
    )


class RollbackConfig(dg.Config):
    """What the routing op receives; the Launchpad's schema (choices) is
    `launchpad_schemas`."""

    environment: str = Field(default="dev", description="environment from migrate.toml")
    schema_name: str = Field(description="the schema (Alembic branch) to take back")
    to: str = Field(description="revision id to go back to, -N for N steps, or base")
    allow_data_loss: bool = Field(
        default=False, description="allow steps that drop tables or columns holding rows"
    )


@dataclass(frozen=True)
class LaunchpadSchemas:
    migrate: dict[str, dg.Field]
    rollback: dict[str, dg.Field]


def launchpad_schemas(
    specs: ProjectSpecs, environments: Sequence[str], names: Names
) -> LaunchpadSchemas:
    """Run config of `migrate` and `rollback` as choices: environments from migrate.toml,
    schemas and revisions from the files (each revision described by its schema and
    message), so a person fills the Launchpad by picking, without reading code."""
    first = environments[0]
    schemas = [i.props.schema for i in specs.items if i.props.env == first]
    revisions = [
        dg.EnumValue(r.revision, description=f"{s.schema}: {r.message or ''}".strip())
        for s in schemas
        for r in s.revisions
        if r.revision
    ]
    listing = "; ".join(
        f"{s.schema}: " + ", ".join(r.revision for r in s.revisions if r.revision) for s in schemas
    )
    environment = dg.Enum(names("Environment"), [dg.EnumValue(e) for e in environments])
    schema = dg.Enum(names("Schema"), [dg.EnumValue(s.schema) for s in schemas])
    upgrade_to = dg.Enum(
        names("UpgradeTarget"),
        [dg.EnumValue("head", description="as far as promotion allows"), *revisions],
    )
    rollback_to = dg.Enum(
        names("RollbackTarget"),
        [
            dg.EnumValue("-1", description="one revision back"),
            dg.EnumValue("base", description="every revision of the schema reverted"),
            *revisions,
        ],
    )
    env_field = dg.Field(
        environment,
        default_value=first,
        description=f"environment from migrate.toml: {', '.join(environments)}",
    )
    return LaunchpadSchemas(
        migrate={
            "environment": env_field,
            "schemas": dg.Field(
                [schema], default_value=[], description="schemas to upgrade; empty means all"
            ),
            "to": dg.Field(
                upgrade_to,
                default_value="head",
                description="head (after the first environment: as far as promotion allows, "
                "the revision the environment before is at and verified), or a revision "
                f"({listing})",
            ),
        },
        rollback={
            "environment": env_field,
            "schema_name": dg.Field(schema, description="the schema (Alembic branch) to take back"),
            "to": dg.Field(
                rollback_to,
                description="-1 (one revision back), base, or a revision of that schema to "
                f"go back to ({listing})",
            ),
            "allow_data_loss": dg.Field(
                bool,
                default_value=False,
                description="allow steps that drop tables or columns holding rows",
            ),
        },
    )


def _report(
    specs: ProjectSpecs,
    migrations: MigrationResource,
    environment: str,
    result: engine.RunResult,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
    """Steps done by a job still show on the schema assets they changed; a failed run
    raises after them, its first line naming the revision and the cause.

    An upgrade is a materialization. A rollback is an observation: it is not an upstream
    update, so eager automation (promote = "auto") never carries it on to the
    environments after this one (Dagster's newly_updated reads materializations only for
    a materializable asset)."""
    where = {}
    if result.ok:
        where = {s.schema: s for s in engine.status(migrations.project(), environment)}
    event: Callable[..., dg.AssetMaterialization | dg.AssetObservation] = (
        dg.AssetObservation if result.operation == "downgrade" else dg.AssetMaterialization
    )
    for schema in dict.fromkeys(r.schema_name for r in result.steps if r.success):
        assert schema is not None
        meta = metadata.run_metadata(environment, schema, result.steps, where.get(schema))
        meta["operation"] = dg.MetadataValue.text(
            "rollback" if result.operation == "downgrade" else "upgrade"
        )
        spec = specs.item(environment, schema).asset
        # an upgrade records the code version it applied, as an asset run does: Dagster's
        # "code version changed" clears once the files are in the database
        tags = (
            {CODE_VERSION_TAG: spec.code_version}
            if spec.code_version and event is dg.AssetMaterialization
            else None
        )
        if event is dg.AssetMaterialization:
            meta.update(
                metadata.schema_history_metadata(
                    environment, schema, migrations.history(environment)
                )
            )
        yield event(asset_key=spec.key, metadata=meta, tags=tags)
    if not result.ok:
        raise metadata.failure(environment, result)


def check_evaluation(
    specs: ProjectSpecs, result: engine.VerifyResult, judged: str
) -> dg.AssetCheckEvaluation:
    """The `verify` check as a job's verify step records it. After a rollback (or an upgrade
    to a chosen revision) the schema is checked where it stands, but the check never reads
    as passing at head when it is not: it fails with WARN severity and says so."""
    errors = [f.message for f in result.findings if f.severity == "error"]
    passed, severity = result.ok, dg.AssetCheckSeverity.ERROR
    description = "; ".join(f.message for f in result.findings) or None
    if result.ok and judged == WHERE_IT_STANDS and result.current != result.head:
        passed, severity = False, dg.AssetCheckSeverity.WARN
        description = (
            f"{result.environment}/{result.schema} was taken to {result.current or 'base'}, "
            f"head is {result.head or 'base'}: verified where it stands (files, drift, hooks), "
            "not at head" + (f"; {description}" if description else "")
        )
    elif errors:
        description = "; ".join(errors)
    check = specs.item(result.environment, result.schema).check
    return dg.AssetCheckEvaluation(
        asset_key=check.asset_key,
        check_name=check.name,
        passed=passed,
        severity=severity,
        blocking=check.blocking,
        metadata=metadata.verify_metadata(result),
        description=description,
    )


def _check_explicit_target(migrations: MigrationResource, environment: str, to: str) -> None:
    """After the first environment, an explicit revision goes no further than promotion
    allows: what the environment before is at and verified."""
    project = migrations.project()
    if project.settings.environment_names[0] == environment:
        return
    revision = project.resolve(to)
    (p,) = promotion.plan(project, environment, [revision.schema])
    if p.target is None or revision.revision not in promotion.lineage(project, p.target):
        raise dg.Failure(
            description=f"{environment}/{revision.schema}: refusing to upgrade to "
            f"{revision.revision}: past what {p.previous} is at and verified "
            f"({p.target or 'nothing'}). {p.reason}",
            allow_retries=False,
        )


def _route(values: dict, environments: list[str]) -> dg.Output:
    if values["environment"] not in environments:
        raise dg.Failure(
            description=f"unknown environment {values['environment']!r} "
            f"(known: {', '.join(environments)})",
            allow_retries=False,
        )
    return dg.Output(values, output_name=values["environment"])


def _route_ops(environments: list[str], names: Names) -> tuple[dg.OpDefinition, dg.OpDefinition]:
    """The routing op of each job: config in, one output per environment, one emitted."""
    outs = {env: dg.Out(dict, is_required=False) for env in environments}
    description = (
        "Sends the run to the configured environment's steps (in its pool migrate_<env>); "
        "the other environments' steps are skipped."
    )

    @dg.op(name=names("route_upgrade"), out=outs, description=description)
    def route_upgrade(config: MigrateConfig) -> Iterator[dg.Output]:
        yield _route(config.model_dump(), environments)

    @dg.op(name=names("route_downgrade"), out=outs, description=description)
    def route_downgrade(config: RollbackConfig) -> Iterator[dg.Output]:
        yield _route(config.model_dump(), environments)

    return route_upgrade, route_downgrade


def _mapping(fields: dict[str, dg.Field], route_name: str) -> dg.ConfigMapping:
    return dg.ConfigMapping(
        config_fn=lambda values: {route_name: {"config": values}},
        config_schema=fields,
    )


@dataclass(frozen=True)
class Jobs:
    migrate: dg.JobDefinition
    rollback: dg.JobDefinition
    environment_sync: dg.JobDefinition


def build_jobs(
    specs: ProjectSpecs, environments: Sequence[EnvironmentSettings], names: Names
) -> Jobs:
    """The `migrate`, `rollback` and `environment_sync` jobs (names prefixed by ``names``;
    their nodes keep today's names, so run config has the same shape for every prefix)."""
    resource_key = names.resource_key
    env_names = [e.name for e in environments]
    schemas = launchpad_schemas(specs, env_names, names)

    def upgrade_op(env: str) -> dg.OpDefinition:
        @dg.op(
            name=names(f"upgrade_{env}"),
            pool=pool(env),
            required_resource_keys={resource_key},
            description=f"Upgrade the selected schemas of {env} (default: all; to head in "
            "the first environment, else as far as promotion allows).",
        )
        def upgrade(context: dg.OpExecutionContext, target: dict) -> Iterator[Any]:
            migrations: MigrationResource = getattr(context.resources, resource_key)
            schemas, to = target["schemas"] or None, target["to"]
            with metadata.clear_errors():
                if to == "head":
                    result, plans = migrations.promote(context, env, schemas)
                else:
                    _check_explicit_target(migrations, env, to)
                    result, plans = migrations.upgrade(context, env, schemas, to), []
            yield from _report(specs, migrations, env, result)
            yield dg.Output(
                {
                    "environment": env,
                    "schemas": target["schemas"],
                    "to": to,
                    "judged": AS_PROMOTED if to == "head" else WHERE_IT_STANDS,
                },
                metadata={
                    "steps": metadata.steps_table(result.steps),
                    "promotion": dg.MetadataValue.md(
                        "\n".join(f"- {p.reason}" for p in plans) or "explicit revision"
                    ),
                },
            )

        return upgrade

    def downgrade_op(env: str) -> dg.OpDefinition:
        @dg.op(
            name=names(f"downgrade_{env}"),
            pool=pool(env),
            required_resource_keys={resource_key},
            description=f"Revert revisions of one schema of {env}: to a revision, by -N, "
            "or to base.",
        )
        def downgrade(context: dg.OpExecutionContext, target: dict) -> Iterator[Any]:
            migrations: MigrationResource = getattr(context.resources, resource_key)
            with metadata.clear_errors():  # a bad target, or data it would destroy
                result = migrations.downgrade(
                    context, env, target["schema_name"], target["to"], target["allow_data_loss"]
                )
            yield from _report(specs, migrations, env, result)
            touched = sorted({r.schema_name for r in result.steps if r.schema_name})
            yield dg.Output(
                {
                    "environment": env,
                    "schemas": touched or [target["schema_name"]],
                    "judged": WHERE_IT_STANDS,
                },
                metadata={"steps": metadata.steps_table(result.steps)},
            )

        return downgrade

    def verify_op(env: str) -> dg.OpDefinition:
        @dg.op(
            name=names(f"verify_{env}"),
            pool=pool(env),
            required_resource_keys={resource_key},
            description=f"Verify the schemas of {env} the previous step touched; fails on "
            "any error, its first line the first finding.",
        )
        def verify(context: dg.OpExecutionContext, target: dict) -> Iterator[Any]:
            migrations: MigrationResource = getattr(context.resources, resource_key)
            schemas = target["schemas"] or None
            with metadata.clear_errors():
                if target["judged"] == AS_PROMOTED:
                    results = migrations.verify_promoted(context, env, schemas)
                else:
                    results = migrations.verify(context, env, schemas, expect_head=False)
            # Yielded, as an op yields any event it emits (AssetCheckEvaluation is one of
            # the events an op's body may yield): the schema assets' `verify` checks show
            # this run's result (tests/test_dagster.py asserts the check execution).
            for result in results:
                yield check_evaluation(specs, result, target["judged"])
            failure = metadata.verify_failure(results)
            if failure is not None:
                raise failure
            yield dg.Output(
                # what environment_sync hands the next environment's upgrade
                {
                    "environment": env,
                    "schemas": target["schemas"],
                    "to": target.get("to", "head"),
                    "judged": target["judged"],
                },
                metadata=metadata.audit_history_metadata(env, migrations.history(env)),
            )

        return verify

    upgrade_ops = {env: upgrade_op(env) for env in env_names}
    verify_ops = {env: verify_op(env) for env in env_names}

    def verify_graph(name: str) -> dg.GraphDefinition:
        @dg.graph(name=names(name), ins={env: dg.GraphIn() for env in env_names})
        def verify(**targets: Any) -> None:
            for env in env_names:
                verify_ops[env].alias(env)(targets[env])

        return verify

    route_upgrade, route_downgrade = _route_ops(env_names, names)

    def step_graph(
        name: str,
        fields: dict[str, dg.Field],
        route: dg.OpDefinition,
        make_op: Callable[[str], dg.OpDefinition],
    ) -> dg.GraphDefinition:
        @dg.graph(
            name=names(name),
            out={env: dg.GraphOut() for env in env_names},
            config=_mapping(fields, route.name),
        )
        def steps() -> dict[str, Any]:
            branches = route()
            return {env: make_op(env).alias(env)(getattr(branches, env)) for env in env_names}

        return steps

    upgrade = step_graph("upgrade", schemas.migrate, route_upgrade, upgrade_ops.__getitem__)
    downgrade = step_graph("downgrade", schemas.rollback, route_downgrade, downgrade_op)
    verify = verify_graph("verify")

    @dg.job(
        name=names("migrate"),
        # Alembic is not thread-safe and each step is short: steps one after another in
        # the run's process rather than a process start per step.
        executor_def=dg.in_process_executor,
        description="Upgrade an environment (default dev, all schemas, to head; after the "
        "first environment as far as promotion allows), then verify. Its steps use the "
        "environment's pool migrate_<env>.",
    )
    def migrate() -> None:
        done = upgrade.alias("upgrade")()
        verify.alias("verify")(**{env: getattr(done, env) for env in env_names})

    @dg.job(
        name=names("rollback"),
        executor_def=dg.in_process_executor,
        description="Downgrade one schema of an environment (pick environment, schema and "
        "target revision in the Launchpad), then verify where it stands. Recorded on the "
        "schema's asset as an observation, never promoted. Its steps use the environment's "
        "pool migrate_<env>.",
    )
    def rollback() -> None:
        done = downgrade.alias("downgrade")()
        verify.alias("verify")(**{env: getattr(done, env) for env in env_names})

    @dg.op(
        name=names("sync_start"),
        description="Every schema, as far as promotion allows.",
    )
    def sync_start() -> dict:
        return {"schemas": [], "to": "head", "judged": AS_PROMOTED}

    @dg.job(
        name=names("environment_sync"),
        executor_def=dg.in_process_executor,
        description='Upgrade the promote = "auto" environments in order, each behind the '
        "verify of the one before it, and verify every environment (the manual ones too, "
        "where nothing is upgraded).",
    )
    def environment_sync() -> None:
        start = sync_start()
        previous = start
        for env in environments:
            if env.promote == "auto":
                upgraded = upgrade_ops[env.name].alias(f"upgrade_{env.name}")(previous)
                previous = verify_ops[env.name].alias(f"verify_{env.name}")(upgraded)
            else:
                verify_ops[env.name].alias(f"verify_{env.name}")(start)

    return Jobs(migrate, rollback, environment_sync)
