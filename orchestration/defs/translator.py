"""One schema in one environment -> one asset spec and its `verify` check spec.

Like dagster-dbt's and dagster-sling's translators: `get_asset_spec(props)` is the one
override point for the asset, `get_asset_check_spec(asset_spec, props)` the one for its
check. Every selection (jobs, sensor targets, automation) is built from the specs they
return, so a changed key (a prefix, a team's own naming) keeps jobs and sensors right.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import quote

import dagster as dg

from dagster_alembic.scan import RevisionFile
from dagster_alembic.settings import EnvironmentSettings


@dataclass(frozen=True)
class SchemaAsset:
    """What the project knows of a schema without importing its revisions."""

    schema: str
    revisions: tuple[RevisionFile, ...]
    depends_on_schemas: frozenset[str] = field(default_factory=frozenset)

    @property
    def head(self) -> str | None:
        """The schema's newest revision: the one no other revision of it names as down."""
        downs = {d for r in self.revisions for d in r.down_revisions}
        heads = sorted(r.revision for r in self.revisions if r.revision and r.revision not in downs)
        return heads[0] if heads else None

    @property
    def code_version(self) -> str:
        """contract: follows the revision files. The head names it; a digest of every file's
        sha256 makes an edit (of an applied file, say) a new version too."""
        digest = hashlib.sha256(
            "\n".join(sorted(f"{r.revision}:{r.checksum}" for r in self.revisions)).encode()
        ).hexdigest()
        return f"{self.head or 'base'}-{digest[:12]}"


@dataclass(frozen=True)
class SchemaAssetProps:
    """One schema in one environment of one project: what the translator translates."""

    environment: EnvironmentSettings
    schema: SchemaAsset
    # the environment before this one on the promotion path (None for the first)
    previous_environment: str | None
    # build_definitions(prefix=...): "" for this repository's own code location
    prefix: str = ""

    @property
    def env(self) -> str:
        return self.environment.name


class SchemaAssetTranslator:
    """Turns SchemaAssetProps into an AssetSpec and the spec of its `verify` check.

    Override `get_asset_spec` and change what you need, e.g. a group per team::

        class MyTranslator(SchemaAssetTranslator):
            def get_asset_spec(self, props):
                return super().get_asset_spec(props).replace_attributes(group_name="platform")

    Dependencies on other schema assets are written with the default keys and re-pointed
    to the keys your override returns, so a changed key needs no change to `deps`.
    """

    def get_asset_spec(self, props: SchemaAssetProps) -> dg.AssetSpec:
        """contract: key [environment, schema] (after the prefix, if any); staging depends on
        dev, prod on staging, and each on the schemas its revisions' depends_on names."""
        return dg.AssetSpec(
            key=default_asset_key(props),
            deps=self._deps(props),
            description=self._description(props),
            group_name=f"{props.prefix}_{props.env}" if props.prefix else props.env,
            kinds={"postgres", "alembic"},
            automation_condition=self._automation_condition(props),
            metadata={"environment": props.env, "schema": props.schema.schema},
            tags={"environment": props.env},
            # A new or edited revision file is a new code version: Dagster shows the asset
            # as changed ("Unsynced") the moment the file lands, before any run.
            code_version=props.schema.code_version,
        )

    def get_asset_check_spec(
        self, asset_spec: dg.AssetSpec, props: SchemaAssetProps
    ) -> dg.AssetCheckSpec:
        """contract: named `verify` and blocking (keep both when you override this)."""
        return dg.AssetCheckSpec(
            "verify",
            asset=asset_spec.key,
            blocking=True,
            description=(
                f"{props.schema.schema} in {props.env} is where promotion takes it (the first "
                "environment: head; the others: the revision the environment before is at and "
                "verified), every applied revision file is unchanged since it was applied, "
                "the live catalog matches the snapshot taken when it was migrated (no drift, "
                "no INVALID index), and revision verify() hooks pass. Blocking: a failure "
                "stops the environments after this one in the same run."
            ),
        )

    def _deps(self, props: SchemaAssetProps) -> list[dg.AssetKey]:
        deps = [
            default_asset_key(props, schema=upstream)
            for upstream in sorted(props.schema.depends_on_schemas)
        ]
        if props.previous_environment is not None:
            deps.insert(0, default_asset_key(props, env=props.previous_environment))
        return deps

    def _description(self, props: SchemaAssetProps) -> str:
        schema = props.schema
        steps = "\n".join(
            f"- `{r.revision}` {r.message or ''}" for r in schema.revisions if r.revision
        )
        return (
            f"PostgreSQL schema `{schema.schema}` in the `{props.env}` database, built by "
            f"{len(schema.revisions)} Alembic revision(s) in migrations/versions/"
            f"{schema.schema}/. Materializing upgrades it to head; the `verify` check "
            f"gates what comes after it.\n\n{steps}\n\n"
            f"[Roll {props.env}/{schema.schema} back]({rollback_launchpad(props)}) "
            "(the rollback job's Launchpad, filled for this schema: pick the target)"
        )

    def _automation_condition(self, props: SchemaAssetProps) -> dg.AutomationCondition | None:
        """promote = "auto": follow the previous environment once its verify passed."""
        if props.environment.promote != "auto" or props.previous_environment is None:
            return None
        return (
            dg.AutomationCondition.eager()
            & dg.AutomationCondition.all_deps_blocking_checks_passed()
        )


def rollback_launchpad(props: SchemaAssetProps, to: str = "-1") -> str:
    """A link into the UI: the rollback job's Launchpad with this environment and schema
    filled in. /guess/<job> finds the job's code location, as Dagster's own links do."""
    job = f"{props.prefix}_rollback" if props.prefix else "rollback"
    config = (
        "ops:\n  downgrade:\n    config:\n"
        f"      environment: {props.env}\n"
        f"      schema_name: {props.schema.schema}\n"
        f'      to: "{to}"\n'
    )
    return f"/guess/{job}/playground/setup?config={quote(config, safe='')}"


def default_asset_key(
    props: SchemaAssetProps, *, env: str | None = None, schema: str | None = None
) -> dg.AssetKey:
    """[prefix,] environment, schema: of props, or of another environment or schema of the
    same project."""
    path = [env or props.env, schema or props.schema.schema]
    return dg.AssetKey([props.prefix, *path] if props.prefix else path)
