"""Every (environment, schema) of one project, translated once: the specs every definition
(assets, checks, jobs, sensors, automation) takes its keys from."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from dagster_alembic.defs.translator import (
    SchemaAsset,
    SchemaAssetProps,
    SchemaAssetTranslator,
    default_asset_key,
)
from dagster_alembic.settings import EnvironmentSettings

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Names:
    """Names of definitions that must be unique in a code location (jobs, sensors,
    schedules, resource keys, op and graph definitions): prefixed when a prefix is set."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and not _NAME.match(self.prefix):
            raise ValueError(
                f"prefix {self.prefix!r}: letters, digits and _ only, not starting with a digit"
            )

    def __call__(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    @property
    def resource_key(self) -> str:
        return self("migrations")


@dataclass(frozen=True)
class SchemaAssetSpec:
    props: SchemaAssetProps
    asset: dg.AssetSpec
    check: dg.AssetCheckSpec


@dataclass(frozen=True)
class ProjectSpecs:
    """The translated specs of one project, in promotion order (environment, then schema)."""

    items: tuple[SchemaAssetSpec, ...]

    def item(self, env: str, schema: str) -> SchemaAssetSpec:
        for item in self.items:
            if item.props.env == env and item.props.schema.schema == schema:
                return item
        raise KeyError(f"no asset for {env}/{schema}")

    def key(self, env: str, schema: str) -> dg.AssetKey:
        return self.item(env, schema).asset.key

    def keys(self, envs: Sequence[str] | None = None) -> list[dg.AssetKey]:
        return [i.asset.key for i in self.items if envs is None or i.props.env in envs]


def build_specs(
    environments: Sequence[EnvironmentSettings],
    schemas: Sequence[SchemaAsset],
    translator: SchemaAssetTranslator,
    prefix: str = "",
) -> ProjectSpecs:
    props = [
        SchemaAssetProps(
            environment=env,
            schema=schema,
            previous_environment=environments[i - 1].name if i else None,
            prefix=prefix,
        )
        for i, env in enumerate(environments)
        for schema in schemas
    ]
    specs = [translator.get_asset_spec(p) for p in props]
    # deps are written with default keys: point them at the keys the translator returned
    moved = {default_asset_key(p): s.key for p, s in zip(props, specs, strict=True)}
    specs = [
        s.replace_attributes(deps=[moved.get(d.asset_key, d.asset_key) for d in s.deps])
        if any(d.asset_key in moved for d in s.deps)
        else s
        for s in specs
    ]
    return ProjectSpecs(
        tuple(
            SchemaAssetSpec(p, s, translator.get_asset_check_spec(s, p))
            for p, s in zip(props, specs, strict=True)
        )
    )
