"""What `migrate verify` checks in one schema, on any connection: a SQLAlchemy Connection
(engine.verify) or a DB-API cursor (fastpath.verify, which imports no SQLAlchemy). One
implementation for both, so the fast path's answer is the full path's by construction.

The revision-level ``verify(connection)`` hooks are not here: they are handed a SQLAlchemy
connection, so only the full path runs them (the fast path declines where one is defined).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dagster_alembic import audit, catalog
from dagster_alembic.revisions import MigrationProject, SchemaStatus


@dataclass(frozen=True)
class VerifyFinding:
    """One thing verify found wrong (severity error) or worth saying (warning)."""

    check: str
    message: str
    severity: str = "error"
    revision: str | None = None

    def to_dict(self) -> dict:
        return {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "revision": self.revision,
        }


@dataclass
class VerifyResult:
    environment: str
    schema: str
    current: str | None
    head: str | None
    findings: list[VerifyFinding]
    audit_id: int | None = None
    duration_ms: float | None = None

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "schema": self.schema,
            "ok": self.ok,
            "current": self.current,
            "head": self.head,
            "findings": [f.to_dict() for f in self.findings],
            "audit_id": self.audit_id,
            "duration_ms": self.duration_ms,
        }


def findings(
    conn: catalog.Reader,
    project: MigrationProject,
    st: SchemaStatus,
    db_heads: tuple[str, ...],
    *,
    expect_head: bool,
    layout: audit.Layout,
) -> list[VerifyFinding]:
    """At head (when expected), every applied revision's file there and unchanged since it
    was applied, no INVALID index, and the live catalog as the run that reached the
    revision left it. ``layout``: the audit table's (ensure_table found it)."""
    found: list[VerifyFinding] = []
    if expect_head and not st.at_head:
        found.append(
            VerifyFinding(
                "at_head",
                f"{st.schema} is at {st.current or 'base'}, head is {st.head}: "
                f"{len(st.pending)} revision(s) pending",
            )
        )
    for head in db_heads:
        if project.revision(head) is None:
            found.append(
                VerifyFinding(
                    "missing_file",
                    f"revision {head} is applied in the database but its file is missing",
                    revision=head,
                )
            )
    recorded = audit.applied_checksums_in(conn, layout, st.schema)
    for revision in project.revisions(st.schema):
        if revision in st.pending:
            continue
        if revision.revision not in recorded:
            found.append(
                VerifyFinding(
                    "checksum",
                    f"{revision.revision} ({revision.path.name}) has no audit record to check",
                    severity="warning",
                    revision=revision.revision,
                )
            )
        elif recorded[revision.revision] != revision.checksum:  # read by this command
            found.append(
                VerifyFinding(
                    "checksum",
                    f"{revision.path.name} (revision {revision.revision}) was edited after it "
                    "was applied: its checksum differs from the audit record",
                    revision=revision.revision,
                )
            )
    return found + _drift(conn, project, st)


def _drift(
    conn: catalog.Reader, project: MigrationProject, st: SchemaStatus
) -> list[VerifyFinding]:
    """The live catalog against the snapshot taken when the schema reached its revision."""
    found = [
        VerifyFinding(
            "invalid_index",
            f"index {st.schema}.{name} is INVALID (a failed CREATE INDEX CONCURRENTLY?): "
            "drop it and run the revision again",
        )
        for name in catalog.invalid_indexes(conn, st.schema)
    ]
    if st.current is not None and not catalog.schema_exists(conn, st.schema):
        # Revisions applied, yet no such schema: the history manages another one, and
        # drift would be checked on nothing.
        found.append(
            VerifyFinding(
                "schema",
                f"schema {st.schema} does not exist though {st.current} is applied: its "
                "revisions manage another schema; say which in migrate.toml, [schemas] "
                '"<folder>" = "<schema>"',
            )
        )
    expected = catalog.load(conn, project.settings.audit_schema, st.schema, st.current)
    if expected is None:
        found.append(
            VerifyFinding(
                "drift",
                f"no baseline of {st.schema} at {st.current or 'base'}: drift not checked "
                "(`migrate baseline` records the schema as it is now as the reference)",
                severity="warning",
            )
        )
    else:
        live = catalog.snapshot(conn, st.schema)
        found += [VerifyFinding("drift", f"{st.schema}: {d}") for d in catalog.diff(expected, live)]
    return found


def result(
    environment: str, st: SchemaStatus, found: list[VerifyFinding], started: float
) -> VerifyResult:
    """The schema's result, timed from ``started`` (time.perf_counter())."""
    checked = VerifyResult(environment, st.schema, st.current, st.head, found)
    checked.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    return checked


def standing_row(
    operation: str,
    schema: str,
    revision: str | None,
    environment: str,
    executed_by: str | None,
    run_id: str | None,
    *,
    success: bool = True,
    **columns: object,
) -> audit.AuditRow:
    """An audit row for a step that moves nothing (verify, baseline): from and to are the
    revision the schema stands at."""
    return audit.AuditRow(
        operation=operation,
        alembic_version=revision,
        prev_alembic_version=revision,
        operation_direction=None,
        schema_name=schema,
        environment=environment,
        success=success,
        executed_by=executed_by,
        run_id=run_id,
        **columns,  # type: ignore[arg-type]
    )


def audit_row(checked: VerifyResult, executed_by: str | None, run_id: str | None) -> audit.AuditRow:
    """The `verify` row of one schema's result: its errors joined, as its error."""
    errors = [f.message for f in checked.findings if f.severity == "error"]
    return standing_row(
        audit.VERIFY,
        checked.schema,
        checked.current,
        checked.environment,
        executed_by,
        run_id,
        success=checked.ok,
        duration_ms=checked.duration_ms,
        error="; ".join(errors)[:4000] or None,
    )
