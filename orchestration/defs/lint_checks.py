"""Lint in Dagster: squawk's findings in each schema asset's metadata, and a `lint` check per
schema asset.

The refusal itself is not here: promotion.upgrade (the asset) and engine.upgrade (the
migrate job's explicit target) refuse before any SQL runs, and clear_errors turns that into
the step's Failure, its first line the finding. What is here only shows findings:

- the materialization's metadata lints what the run applied and what is still pending
  (after the first environment: past what the environment before verified), under the
  environment's rules;
- the `lint` check lints what the environment has pending, so the asset page says ahead of
  a promotion that it would be refused. It is not blocking: the `verify` check stays the one
  gate between environments (DESIGN contract), and the promotion refuses on its own. It fails
  with ERROR severity for a finding the environment's rules make an error (that promotion
  would be refused), with WARN for warnings only, and passes when nothing is left but
  findings the revisions silence.
"""

from collections.abc import Sequence

import dagster as dg

from dagster_alembic import audit, engine, lint
from dagster_alembic.defs import metadata
from dagster_alembic.defs.resource import MigrationResource
from dagster_alembic.defs.specs import ProjectSpecs, SchemaAssetSpec
from dagster_alembic.errors import ConfigurationError, MigrationError
from dagster_alembic.revisions import MigrationProject, Revision

CHECK_NAME = "lint"

_FINDING_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("revision", "string"),
        dg.TableColumn("severity", "string"),
        dg.TableColumn("rule", "string"),
        dg.TableColumn("statement", "string"),
        dg.TableColumn("message", "string"),
        dg.TableColumn("reason", "string"),
    ]
)


def findings_metadata(result: lint.LintResult) -> dict[str, dg.MetadataValue]:
    """A lint result as metadata: every finding (revision, severity, rule, statement, what
    squawk says, the revision's reason for an ignored one), the counts, and whose rules."""
    counts = result.counts()
    return {
        "lint_findings": dg.MetadataValue.table(
            records=[
                dg.TableRecord(
                    {
                        "revision": revision.revision,
                        "severity": f.severity,
                        "rule": f.rule,
                        "statement": " ".join((f.excerpt or f.statement).split()),
                        "message": f.message,
                        "reason": f.reason or "",
                    }
                )
                for revision, f in result.findings()
            ],
            schema=_FINDING_COLUMNS,
        ),
        "lint_errors": dg.MetadataValue.int(counts["error"]),
        "lint_warnings": dg.MetadataValue.int(counts["warning"]),
        "lint_ignored": dg.MetadataValue.int(counts["ignored"]),
        "lint_revisions": dg.MetadataValue.text(
            ", ".join(r.revision.revision for r in result.revisions) or "none"
        ),
        "lint_rules": dg.MetadataValue.text(
            f"squawk {result.squawk_version}, {result.environment} rules (migrate.toml [lint])"
        ),
    }


def lint_metadata(
    project: MigrationProject,
    environment: str,
    schema: str,
    rows: Sequence[audit.AuditRow],
    status: engine.SchemaStatus | None,
) -> dict[str, dg.MetadataValue]:
    """Findings of the schema's revisions this run applied (``rows``) and of those still
    pending (``status``), under the environment's rules. Never raises: the upgrade is done,
    and a lint that cannot run (no squawk, a revision that cannot render offline) is one
    line of metadata, not a failed materialization."""
    applied = [
        r.alembic_version
        for r in rows
        if r.success and r.operation == audit.MIGRATION and r.schema_name == schema
    ]
    found = [project.revision(rid) for rid in applied if rid]
    revisions: list[Revision] = [r for r in found if r is not None]
    revisions += [r for r in (status.pending if status else ()) if r not in revisions]
    if not revisions:
        return {"lint_revisions": dg.MetadataValue.text("none: nothing applied or pending")}
    try:
        result = lint.lint_revisions(project, environment, revisions)
    except (ConfigurationError, MigrationError) as exc:
        return {"lint_revisions": dg.MetadataValue.text(f"not linted: {exc}")}
    return findings_metadata(result)


def lint_check_spec(item: SchemaAssetSpec) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        CHECK_NAME,
        asset=item.asset.key,
        blocking=False,
        description=(
            f"squawk over the offline SQL of each revision {item.props.env} has not applied "
            f"yet, under {item.props.env}'s [lint] rules in migrate.toml. Fails (ERROR) when a "
            "finding is an error there: promoting it would be refused before any SQL runs; "
            "WARN for warnings. Not blocking: verify is the gate, the promotion refuses on "
            "its own."
        ),
    )


def check_result(check: dg.AssetCheckSpec, result: lint.LintResult) -> dg.AssetCheckResult:
    errors, warnings = result.findings("error"), result.findings("warning")
    worst = errors or warnings
    if worst:
        description = "\n".join(lint.finding_line(r, f) for r, f in worst)
    elif result.revisions:
        description = f"{len(result.revisions)} pending revision(s): no finding to act on"
    else:
        description = f"{result.environment}: nothing pending to lint"
    return dg.AssetCheckResult(
        asset_key=check.asset_key,
        check_name=check.name,
        passed=not worst,
        severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
        metadata=findings_metadata(result),
        description=description,
    )


def build_lint_check(item: SchemaAssetSpec, resource_key: str) -> dg.AssetChecksDefinition:
    check, env, schema = lint_check_spec(item), item.props.env, item.props.schema.schema

    # No pool: it reads the environment's version table and never takes the migration lock.
    @dg.multi_asset_check(
        name=f"{check.asset_key.to_python_identifier()}_{check.name}",
        specs=[check],
        required_resource_keys={resource_key},
    )
    def _lint(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        migrations: MigrationResource = getattr(context.resources, resource_key)
        with metadata.clear_errors():
            result = lint.lint(migrations.project(), env, [schema])
        return check_result(check, result)

    return _lint


def build_lint_checks(specs: ProjectSpecs, resource_key: str) -> list[dg.AssetChecksDefinition]:
    return [build_lint_check(item, resource_key) for item in specs.items]
