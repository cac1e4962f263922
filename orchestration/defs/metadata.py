"""Engine results as the metadata people read in the Dagster UI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from dagster_alembic import audit, engine, promotion
from dagster_alembic.errors import ConfigurationError, MigrationError

_STEP_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("schema", "string"),
        dg.TableColumn("operation", "string"),
        dg.TableColumn("from", "string"),
        dg.TableColumn("to", "string"),
        dg.TableColumn("message", "string"),
        dg.TableColumn("duration_ms", "float"),
        dg.TableColumn("success", "bool"),
        dg.TableColumn("audit_id", "int"),
    ]
)


def steps_table(rows: list[audit.AuditRow]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "schema": r.schema_name or "",
                    "operation": r.operation,
                    "from": r.prev_alembic_version or "base",
                    "to": r.alembic_version or "base",
                    "message": r.message or "",
                    "duration_ms": float(r.duration_ms or 0.0),
                    "success": r.success,
                    "audit_id": int(r.id or 0),
                }
            )
            for r in rows
        ],
        schema=_STEP_COLUMNS,
    )


# What an asset's sidebar has room for: the asset and the operation are the event's own.
_REVISION_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("to", "string"),
        dg.TableColumn("message", "string"),
        dg.TableColumn("ms", "float"),
    ]
)


def revisions_table(rows: list[audit.AuditRow]) -> dg.TableMetadataValue:
    """The steps of one schema, three columns wide: fits the asset page's metadata column."""
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "to": r.alembic_version or "base",
                    "message": r.message or "",
                    "ms": round(float(r.duration_ms or 0.0), 1),
                }
            )
            for r in rows
        ],
        schema=_REVISION_COLUMNS,
    )


def run_metadata(
    environment: str,
    schema: str,
    rows: list[audit.AuditRow],
    status: engine.SchemaStatus | None,
) -> dict[str, dg.MetadataValue]:
    """What a schema asset's materialization shows: what ran, how long, where it stands."""
    mine = [r for r in rows if r.schema_name == schema]
    metadata: dict[str, dg.MetadataValue] = {
        "environment": dg.MetadataValue.text(environment),
        "revisions_applied": revisions_table(mine),
        "steps": dg.MetadataValue.int(len(mine)),
        # float(): a sum over no steps is int 0, which MetadataValue.float refuses
        "duration_ms": dg.MetadataValue.float(
            round(float(sum(r.duration_ms or 0.0 for r in mine)), 3)
        ),
        "audit_row_ids": dg.MetadataValue.text(", ".join(str(r.id) for r in mine) or "none"),
        "audit_table": dg.MetadataValue.text(
            f"alembic_version_history in the {environment} database"
        ),
    }
    if status is not None:
        metadata["current_revision"] = dg.MetadataValue.text(status.current or "base")
        metadata["head_revision"] = dg.MetadataValue.text(status.head or "base")
    ran = [
        f"-- {r.alembic_version}: {r.message}\n" + ";\n".join(r.sql or []) + ";"
        for r in mine
        if r.success
    ]
    metadata["sql"] = dg.MetadataValue.md(
        "```sql\n" + "\n\n".join(ran) + "\n```" if ran else "Nothing to do: no SQL ran."
    )
    return metadata


def promotion_metadata(p: promotion.Promotion) -> dict[str, dg.MetadataValue]:
    """What promotion decided for a schema asset: where it went (or why it stayed)."""
    return {
        "promoted_to": dg.MetadataValue.text(p.upgrade_to or "nothing to do"),
        "promotion_target": dg.MetadataValue.text(p.target or "none"),
        "reason": dg.MetadataValue.text(p.reason),
    }


# Verify's findings by kind, in the order verify checks them: one `verify` check per asset
# (the contract's blocking gate, one pass, one audit row) that says which kind failed.
FINDING_KINDS = {
    "position": ("at_head", "at_target"),
    "files": ("checksum", "missing_file"),
    "drift": ("drift", "schema"),
    "invalid_index": ("invalid_index",),
    "hooks": ("revision_hook",),
}


def finding_kinds(result: engine.VerifyResult) -> str:
    """One line per kind of finding: passed, warning or failed, and the first finding."""
    lines = ["| kind | result | first finding |", "|---|---|---|"]
    for kind, checks in FINDING_KINDS.items():
        found = [f for f in result.findings if f.check in checks]
        errors = [f for f in found if f.severity == "error"]
        outcome = "**failed**" if errors else "warning" if found else "passed"
        first = (errors or found)[0].message if found else ""
        lines.append(f"| {kind} | {outcome} | {first.replace('|', '/')} |")
    return "\n".join(lines)


def verify_metadata(result: engine.VerifyResult) -> dict[str, dg.MetadataValue]:
    findings = [f"- **{f.severity}** `{f.check}`: {f.message}" for f in result.findings]
    return {
        "environment": dg.MetadataValue.text(result.environment),
        "current_revision": dg.MetadataValue.text(result.current or "base"),
        "head_revision": dg.MetadataValue.text(result.head or "base"),
        "findings": dg.MetadataValue.md("\n".join(findings) or "No findings."),
        "checks": dg.MetadataValue.md(finding_kinds(result)),
        "finding_count": dg.MetadataValue.int(len(result.findings)),
        # an id, not a measure: text, so Dagster does not plot it over time
        "audit_row_id": dg.MetadataValue.text(str(result.audit_id or "none")),
        "duration_ms": dg.MetadataValue.float(result.duration_ms or 0.0),
    }


def verify_failure(results: list[engine.VerifyResult]) -> dg.Failure | None:
    """A failed verify as the step's and the run's error: its first line names the first
    finding, the others follow, each schema's by kind in the metadata. None if all passed."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return None
    lines = [
        f"verify failed for {r.environment}/{r.schema}: "
        + "; ".join(f.message for f in r.findings if f.severity == "error")
        for r in failed
    ]
    return dg.Failure(
        description="\n".join(lines),
        metadata={
            f"{r.environment}/{r.schema}": dg.MetadataValue.md(finding_kinds(r)) for r in failed
        },
        # a finding is the database's state: retrying the step finds it again
        allow_retries=False,
    )


def failure(environment: str, result: engine.RunResult) -> dg.Failure:
    """A failed run's first line names the revision and the cause."""
    return dg.Failure(
        description=result.failure_line,
        metadata={
            "error": dg.MetadataValue.text(result.error or ""),
            "steps": steps_table(result.steps),
        },
    )


@contextmanager
def clear_errors() -> Iterator[None]:
    """Bad configuration or a refused step: one readable line in Dagster, not a traceback."""
    try:
        yield
    except (ConfigurationError, MigrationError) as exc:
        # bad input is not worth a retry; a refused step (a lock held, say) may be
        raise dg.Failure(
            description=str(exc), allow_retries=not isinstance(exc, ConfigurationError)
        ) from None


def audit_history_metadata(
    environment: str, rows: list[audit.AuditRow], title: str | None = None
) -> dict[str, dg.MetadataValue]:
    """The environment's recent audit history: a timeline picture and the rows as a table."""
    import base64

    from dagster_alembic.plot import audit_timeline

    svg = audit_timeline(rows, title or f"alembic_version_history in {environment}")
    encoded = base64.b64encode(svg.encode()).decode()
    lines = [
        "| id | changed_at | schema | operation | from | to | ok | ms | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.id} | {r.changed_at:%Y-%m-%d %H:%M:%S} | {r.schema_name} | {r.operation} | "
            f"{r.prev_alembic_version or 'base'} | {r.alembic_version or 'base'} | "
            f"{'yes' if r.success else '**no**'} | {r.duration_ms or 0:.0f} | "
            f"{(r.run_id or '')[:8]} |"
        )
    return {
        "audit_timeline": dg.MetadataValue.md(
            f"![audit timeline](data:image/svg+xml;base64,{encoded})"
        ),
        "audit_history": dg.MetadataValue.md("\n".join(lines)),
    }


def schema_history_metadata(
    environment: str, schema: str, rows: list[audit.AuditRow]
) -> dict[str, dg.MetadataValue]:
    """One schema's recent audit history, for its asset's materialization: the picture only
    (the steps of this run are in revisions_applied)."""
    mine = [r for r in rows if r.schema_name == schema]
    picture = audit_history_metadata(environment, mine, f"{environment}/{schema}: audit history")
    return {"audit_timeline": picture["audit_timeline"]}
