"""AlembicMigrationsComponent: one Alembic project added to a `dg` project from defs.yaml.

Shaped like dagster-dbt's DbtProjectComponent and dagster-sling's
SlingReplicationCollectionComponent: a `dg.Component` + `dg.Resolvable` dataclass whose
fields are the YAML a user writes, a `get_asset_spec` override point, and `build_defs`,
which returns `build_definitions(...)` (orchestration/definitions.py) for the project::

    # defs/billing_migrations/defs.yaml
    type: dagster_alembic.components.AlembicMigrationsComponent
    attributes:
      alembic_ini: ../../../billing/alembic.ini   # relative to this file's folder
      prefix: billing
      translation:                                # optional, as dagster-dbt's
        group_name: "billing_{{ environment }}"
"""

# No `from __future__ import annotations`: dg.Resolvable reads the field annotations as types.
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import dagster as dg

# The one non-public import of this module: the resolver dagster-dbt and dagster-sling use
# for their `translation` field (`dagster.components` does not export it in 1.13).
# tests/test_component.py exercises it, so a Dagster upgrade that moves it fails there.
from dagster.components.utils.translation import TranslationFn, TranslationFnResolver

from dagster_alembic.definitions import build_definitions
from dagster_alembic.defs.translator import SchemaAssetProps, SchemaAssetTranslator


def _template_vars(props: SchemaAssetProps) -> Mapping[str, Any]:
    """What a `translation` template sees: `{{ environment }}`, `{{ schema }}`,
    `{{ prefix }}`, and `{{ props }}` (the SchemaAssetProps) and `{{ spec }}` (the default
    spec)."""
    return {
        "props": props,
        "environment": props.env,
        "schema": props.schema.schema,
        "prefix": props.prefix,
    }


class _ComponentTranslator(SchemaAssetTranslator):
    """Routes `get_asset_spec` through the component, so a subclass overriding the
    component's `get_asset_spec` (or a `translation` in defs.yaml) changes the specs that
    jobs, sensors and automation select."""

    def __init__(self, component: "AlembicMigrationsComponent"):
        self._component = component

    def get_asset_spec(self, props: SchemaAssetProps) -> dg.AssetSpec:
        return self._component.get_asset_spec(props)


@dataclass
class AlembicMigrationsComponent(dg.Component, dg.Resolvable):
    """An Alembic project's schemas as Dagster assets, per environment of its migrate.toml.

    Adds the whole code location of `build_definitions`: one asset per (environment,
    schema) with a blocking `verify` check, the migrate/rollback/promote/environment_sync
    and fleet jobs, the revision-files and promotion sensors, the nightly schedule and the
    migrations resource. With a `prefix`, every asset key starts with it and every job,
    sensor, schedule and resource name carries it, so several projects share one code
    location. The databases' URLs come from the variables the project's migrate.toml names.
    """

    # The project's alembic.ini, relative to the folder of this defs.yaml (or absolute).
    alembic_ini: str = "alembic.ini"
    # In front of every asset key and every job/sensor/schedule/resource name; "" for none.
    prefix: str = ""
    # Asset attributes for every schema asset, as dagster-dbt's `translation`; templates
    # see {{ environment }}, {{ schema }}, {{ prefix }}, {{ props }} and {{ spec }}.
    translation: Annotated[
        TranslationFn[SchemaAssetProps] | None,
        TranslationFnResolver[SchemaAssetProps](_template_vars),
    ] = None

    def get_asset_spec(self, props: SchemaAssetProps) -> dg.AssetSpec:
        """The spec of one schema in one environment: the integration's default spec with
        `translation` applied. Override in a subclass to change it in Python."""
        spec = SchemaAssetTranslator().get_asset_spec(props)
        return self.translation(spec, props) if self.translation else spec

    def alembic_ini_path(self, context: dg.ComponentLoadContext) -> Path:
        """`alembic_ini` resolved against the folder of the component's defs.yaml."""
        return (context.path / self.alembic_ini).resolve()

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_definitions(
            str(self.alembic_ini_path(context)),
            prefix=self.prefix,
            translator=_ComponentTranslator(self),
        )
