"""Promotion: how far each schema of an environment may go. Never imports dagster.

DESIGN (contract): promotion carries what was verified, never more. The first
environment (dev) goes to the head of the revision files. Every environment after it
goes, per schema, to the revision the environment before it is at *and verified*: read
from that environment's version table and its audit table (alembic_version_history).

A verify counts for revision R when it is the newest verify row at R, it succeeded, no
successful rollback or stamp of the schema came after it (those replace what was
verified), and every revision file up to R is still the one that environment applied
(same sha256 as its migration row). When the previous environment is not verified where
it stands, the target is the newest revision below that it did verify, or nothing.
An environment is never downgraded by promotion: at or past its target, nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from dagster_alembic import audit, engine
from dagster_alembic.revisions import MigrationProject


@dataclass(frozen=True)
class Promotion:
    """Where one schema of one environment stands, where it may go, and why."""

    environment: str
    schema: str
    current: str | None
    head: str | None
    #: the revision this environment should be at: head in the first environment, else
    #: the revision the previous one is at and verified (None: nothing verified there yet)
    target: str | None
    #: what an upgrade does now: None when there is nothing to do (at or past the target)
    upgrade_to: str | None
    #: one line for people: what was decided and why
    reason: str
    previous: str | None = None
    verified_at: datetime | None = None
    #: already beyond the target (the previous environment was rolled back since)
    past_target: bool = False

    @property
    def to_head(self) -> bool:
        return self.upgrade_to is not None and self.upgrade_to == self.head

    @property
    def behind_target(self) -> bool:
        return self.upgrade_to is not None

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "schema": self.schema,
            "current": self.current,
            "head": self.head,
            "target": self.target,
            "upgrade_to": self.upgrade_to,
            "reason": self.reason,
            "previous": self.previous,
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
        }


@dataclass(frozen=True)
class _Record:
    """What the previous environment's audit table says about one schema."""

    passes: dict[str, datetime]  # revision -> when a verify that still counts passed there
    last_verify: dict[str, bool]  # revision -> did its newest verify pass
    applied_checksums: dict[str, str]  # revision -> sha256 of the file as last applied


def _name(revision: str | None) -> str:
    return revision or "base"


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S %Z}".strip() if moment else "an unknown time"


def lineage(project: MigrationProject, revision: str | None) -> set[str]:
    """``revision`` and every revision of its schema below it (down_revisions)."""
    return project.lineage(revision)


def _read_record(conn: sa.Connection, audit_schema: str, schemas: list[str]) -> dict[str, _Record]:
    records = {s: _Record({}, {}, {}) for s in schemas}
    table = audit.history_table(conn, audit_schema)  # any layout (Audit-Alembic's too)
    if table is None:
        return records
    query = (
        sa.select(
            table.c.schema_name,
            table.c.operation,
            table.c.alembic_version,
            table.c.success,
            table.c.changed_at,
            table.c.revision_checksum,
        )
        .where(
            table.c.schema_name.in_(schemas),
            table.c.operation.in_([audit.VERIFY, audit.MIGRATION, audit.ROLLBACK, audit.STAMP]),
        )
        .order_by(table.c.id.desc())
    )
    replaced: set[str] = set()  # schemas with a rollback or stamp newer than the rows read
    for schema_name, operation, version, success, changed_at, checksum in conn.execute(query):
        record = records[schema_name]
        if operation in (audit.ROLLBACK, audit.STAMP):
            if success:
                replaced.add(schema_name)
        elif operation == audit.MIGRATION:
            if success and version and checksum and version not in record.applied_checksums:
                record.applied_checksums[version] = checksum
        elif version and version not in record.last_verify:  # the newest verify at version
            record.last_verify[version] = bool(success)
            if success and schema_name not in replaced:
                record.passes[version] = changed_at
    conn.rollback()
    return records


def _edited(project: MigrationProject, record: _Record, revisions: set[str]) -> list[str]:
    """Revisions among ``revisions`` whose file changed since the environment applied it."""
    edited = []
    for rid in revisions:
        rev = project.revision(rid)
        recorded = record.applied_checksums.get(rid)
        if rev is not None and recorded is not None and recorded != rev.checksum:
            edited.append(rid)
    return sorted(edited)


def _verified_target(
    project: MigrationProject, schema: str, previous: str, prev_current: str | None, record: _Record
) -> tuple[str | None, datetime | None, str]:
    """The revision the previous environment is at and verified (or the newest below it
    that it verified), when it was verified, and what the previous environment's state is."""
    if prev_current is None:
        return None, None, f"{previous} has no {schema} revision applied"
    below = lineage(project, prev_current)
    edited = _edited(project, record, below)
    if prev_current in record.passes and not edited:
        when = record.passes[prev_current]
        return prev_current, when, f"{previous} is at {prev_current}, verified at {_when(when)}"
    if edited:
        why = f"revision file(s) {', '.join(edited)} changed since {previous} applied them"
    elif record.last_verify.get(prev_current) is False:
        why = "its last verify failed"
    else:
        why = "it has not been verified there"
    state = f"{previous} is at {prev_current} but {why}"
    # the newest revision it verified below where it stands, whose files are unchanged
    for rev in reversed(project.revisions(schema)):
        rid = rev.revision
        if (
            rid in below
            and rid in record.passes
            and not _edited(project, record, lineage(project, rid))
        ):
            when = record.passes[rid]
            return rid, when, f"{state}; it verified {rid} at {_when(when)}"
    return None, None, state


def plan(
    project: MigrationProject, environment: str, schemas: list[str] | None = None
) -> list[Promotion]:
    """Where each schema (default all, in dependency order) of ``environment`` may go."""
    names = project.settings.environment_names
    project.settings.environment(environment)  # unknown environment: one clear error
    here = engine.status(project, environment, schemas)
    index = names.index(environment)
    if index == 0:
        return [_first(environment, st) for st in here]
    previous = names[index - 1]
    # Every schema is planned, the selected ones returned: a schema's target may need
    # revisions of another (depends_on), which must be verified there too.
    every = engine.status(project, environment) if schemas else here
    names_all = [st.schema for st in every]
    there = {st.schema: st for st in engine.status(project, previous, names_all)}
    with engine.connect(project, previous) as (conn, _):
        records = _read_record(conn, project.settings.audit_schema, names_all)
    planned: dict[str, Promotion] = {}
    for st in every:  # dependency order: a schema's dependencies are planned before it
        target, when, state = _verified_target(
            project, st.schema, previous, there[st.schema].current, records[st.schema]
        )
        target, state = _within_dependencies(project, st.schema, target, state, planned)
        planned[st.schema] = _later(project, environment, previous, st, target, when, state)
    return [planned[st.schema] for st in here]


def _needs(project: MigrationProject, revision: str) -> set[str]:
    """Every revision an upgrade to ``revision`` applies: its lineage and, through
    depends_on (a branch label: that schema's head), other schemas' revisions."""
    found: set[str] = set()
    todo = [revision]
    while todo:
        for rid in lineage(project, todo.pop()):
            if rid in found:
                continue
            found.add(rid)
            rev = project.revision(rid)
            for dep in rev.depends_on if rev else ():
                if project.revision(dep) is not None:
                    todo.append(dep)
                else:  # a branch label: the head of the schema whose files carry it
                    for f in project.files:
                        if dep in f.branch_labels and (head := project.head(f.schema)):
                            todo.append(head)
                            break
    return found


def _within_dependencies(
    project: MigrationProject,
    schema: str,
    target: str | None,
    state: str,
    planned: dict[str, Promotion],
) -> tuple[str | None, str]:
    """``target`` lowered, if need be, to the newest revision whose depends_on pull in only
    what the other schemas may reach here (their own promotion target, or where they
    already are): an upgrade never carries another schema past what was verified."""
    if target is None:
        return target, state

    # What the schemas planned before may reach here; a revision belongs to one schema,
    # so one set serves them all (read once, not once per revision checked).
    reachable = {
        rid
        for p in planned.values()
        for rid in lineage(project, p.target) | lineage(project, p.current)
    }

    def blocked(candidate: str) -> list[str]:
        return sorted(
            rid
            for rid in _needs(project, candidate)
            if (rev := project.revision(rid)) is not None
            and rev.schema != schema
            and rid not in reachable
        )

    missing = blocked(target)
    if not missing:
        return target, state
    why = (
        f"{target} needs {', '.join(missing)} of another schema, not verified in the "
        "environment before"
    )
    below = lineage(project, target)
    for rev in reversed(project.revisions(schema)):
        rid = rev.revision
        if rid in below and not blocked(rid):
            return rid, f"{state}; {why}: going to {rid}"
    return None, f"{state}; {why}"


def _first(environment: str, st: engine.SchemaStatus) -> Promotion:
    where = f"{environment}/{st.schema}"
    if st.at_head:
        reason = f"{where} is at head {_name(st.head)}: nothing to do"
        upgrade_to = None
    else:
        reason = f"{where}: first environment, upgrading {_name(st.current)} to head {st.head}"
        upgrade_to = st.head
    return Promotion(environment, st.schema, st.current, st.head, st.head, upgrade_to, reason)


def _later(
    project: MigrationProject,
    environment: str,
    previous: str,
    st: engine.SchemaStatus,
    target: str | None,
    when: datetime | None,
    state: str,
) -> Promotion:
    where = f"{environment}/{st.schema}"
    upgrade_to = None
    past = False
    if target is None:
        reason = f"{where} stays at {_name(st.current)}: {state}: nothing verified to promote"
    elif target in lineage(project, st.current):
        if target == st.current:
            reason = f"{where} is at {target}: {state}: nothing to do"
        else:
            past = True
            reason = (
                f"{where} stays at {st.current}: {state}; "
                f"{st.current} is past that, and promotion never downgrades"
            )
    elif st.current is None or st.current in lineage(project, target):
        upgrade_to = target
        reason = f"{where}: {state}: upgrading to {target} (head is {_name(st.head)})"
    else:
        reason = f"{where} stays at {st.current}: not on the path to {previous}'s {target}"
    return Promotion(
        environment,
        st.schema,
        st.current,
        st.head,
        target,
        upgrade_to,
        reason,
        previous,
        when,
        past,
    )


def upgrade(
    project: MigrationProject,
    environment: str,
    schemas: list[str] | None = None,
    *,
    run_id: str | None = None,
    on_step: engine.StepCallback | None = None,
    on_plan: Callable[[Promotion], None] | None = None,
) -> tuple[engine.RunResult, list[Promotion]]:
    """Upgrade each schema as far as promotion allows (see ``plan``): nothing to do is a
    success with no steps. ``on_plan`` hears each schema's decision before its steps.
    Stops at the first schema whose upgrade fails.

    Before any schema moves, everything the upgrade would apply is linted under the
    environment's rules: a finding they make an error refuses the whole upgrade
    (lint.LintRefused, its first line the finding), no SQL run, no audit row written."""
    promotions = plan(project, environment, schemas)
    engine.lint_gate(project, environment, [p.upgrade_to for p in promotions if p.upgrade_to])
    result = engine.RunResult(environment, "upgrade")
    for p in promotions:
        if on_plan is not None:
            on_plan(p)
        if p.upgrade_to is None:
            continue
        done = engine.upgrade(
            project,
            environment,
            schemas=[p.schema],
            to=None if p.to_head else p.upgrade_to,
            run_id=run_id,
            on_step=on_step,
            check_lint=False,  # linted above, every schema at once
        )
        result.steps.extend(done.steps)
        result.warnings.extend(done.warnings)
        if not done.ok:
            result.error = done.error
            break
    return result, promotions


def target_finding(p: Promotion) -> engine.VerifyFinding | None:
    """verify's expectation after the first environment: at the promotion target, not at
    the newest file (a staging that stopped where dev verified is where it should be)."""
    if p.previous is None or p.target is None:
        return None
    if p.behind_target:
        return engine.VerifyFinding(
            "at_target",
            f"{p.schema} is at {_name(p.current)}, behind {p.target}, where {p.previous} is "
            f"and verified it (head is {_name(p.head)})",
        )
    if p.past_target:
        return engine.VerifyFinding(
            "at_target",
            f"{p.schema} is at {_name(p.current)}, past {p.target}, where {p.previous} is and "
            "verified it (was the previous environment rolled back?)",
            severity="warning",
        )
    return None


def verify(
    project: MigrationProject,
    environment: str,
    schemas: list[str] | None = None,
    *,
    run_id: str | None = None,
    report: Callable[[list[engine.VerifyResult]], None] | None = None,
) -> list[engine.VerifyResult]:
    """verify, expecting head in the first environment and the promotion target in the
    others: a staging that stopped where dev verified is not failing because a newer file
    exists. The CLI and Dagster's check both verify through here; ``report`` as for
    engine.verify."""
    if project.settings.environment_names[0] == environment:
        return engine.verify(project, environment, schemas, run_id=run_id, report=report)
    plans = plan(project, environment, schemas)
    by_schema = {p.schema: p for p in plans}
    # Behind its target, a schema is behind its head too: verify then expects head, so that
    # it fails; at or past the target, it does not.
    behind = {p.schema for p in plans if p.behind_target}

    def expected(result: engine.VerifyResult) -> None:
        finding = target_finding(by_schema[result.schema])
        if finding is not None:  # says what is expected: the target, not the head
            result.findings[:] = [f for f in result.findings if f.check != "at_head"]
            result.findings.append(finding)

    order = [p.schema for p in plans]

    def in_order(results: list[engine.VerifyResult]) -> None:
        if report is not None:
            report(sorted(results, key=lambda r: order.index(r.schema)))

    results = engine.verify(
        project,
        environment,
        order,
        expect_head=behind.__contains__,
        adjust=expected,
        report=in_order,
        run_id=run_id,
    )
    return sorted(results, key=lambda r: order.index(r.schema))
