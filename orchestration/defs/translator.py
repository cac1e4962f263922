"""One schema in one environment -> one asset. Every default is a method to override."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from orchestration.scan import RevisionFile
from orchestration.settings import EnvironmentSettings


@dataclass(frozen=True)
class SchemaAsset:
    """What the project knows of a schema without importing its revisions."""

    schema: str
    revisions: tuple[RevisionFile, ...]
    depends_on_schemas: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class SchemaAssetTranslator:
    """Turns (environment, schema) into an AssetSpec.

    Override a method to change one default, e.g. a group per team::

        class MyTranslator(SchemaAssetTranslator):
            def get_group_name(self, env, schema):
                return "platform"
    """

    environments: tuple[EnvironmentSettings, ...]

    def get_asset_key(self, env: str, schema: str) -> dg.AssetKey:
        """contract: [environment, schema], e.g. dev/ecommerce."""
        return dg.AssetKey([env, schema])

    def previous_environment(self, env: str) -> str | None:
        names = [e.name for e in self.environments]
        index = names.index(env)
        return names[index - 1] if index > 0 else None

    def get_deps(self, env: str, schema: SchemaAsset) -> list[dg.AssetKey]:
        """The promotion path (staging <- dev) and depends_on between schemas."""
        deps = [self.get_asset_key(env, upstream) for upstream in sorted(schema.depends_on_schemas)]
        previous = self.previous_environment(env)
        if previous is not None:
            deps.insert(0, self.get_asset_key(previous, schema.schema))
        return deps

    def get_description(self, env: str, schema: SchemaAsset) -> str:
        steps = "\n".join(
            f"- `{r.revision}` {r.message or ''}" for r in schema.revisions if r.revision
        )
        return (
            f"PostgreSQL schema `{schema.schema}` in the `{env}` database, built by "
            f"{len(schema.revisions)} Alembic revision(s) in migrations/versions/"
            f"{schema.schema}/. Materializing upgrades it to head; the `verify` check "
            f"gates what comes after it.\n\n{steps}"
        )

    def get_group_name(self, env: str, schema: str) -> str:
        return env

    def get_pool(self, env: str) -> str:
        """One migration at a time per target database (the engine's lock stays behind it)."""
        return f"migrate_{env}"

    def get_kinds(self) -> set[str]:
        return {"postgres", "alembic"}

    def get_automation_condition(self, env: EnvironmentSettings) -> dg.AutomationCondition | None:
        """promote = "auto": follow the previous environment once its verify passed."""
        if env.promote != "auto" or self.previous_environment(env.name) is None:
            return None
        return (
            dg.AutomationCondition.eager()
            & dg.AutomationCondition.all_deps_blocking_checks_passed()
        )

    def get_asset_spec(self, env: EnvironmentSettings, schema: SchemaAsset) -> dg.AssetSpec:
        return dg.AssetSpec(
            key=self.get_asset_key(env.name, schema.schema),
            deps=self.get_deps(env.name, schema),
            description=self.get_description(env.name, schema),
            group_name=self.get_group_name(env.name, schema.schema),
            kinds=self.get_kinds(),
            automation_condition=self.get_automation_condition(env),
            metadata={"environment": env.name, "schema": schema.schema},
            tags={"environment": env.name},
        )
