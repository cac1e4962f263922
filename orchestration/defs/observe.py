"""The live revision of every (environment, schema), observed: changes made outside Dagster
(the `migrate` CLI, plain `alembic`) show in the UI.

A sensor reads each environment's version table (one connection, one query per
environment; heads and lineage come from the scanned files, nothing is imported) and reports
an AssetObservation for each schema whose revision or head moved since the last tick. Its
cursor holds one short entry per (environment, schema): bounded whatever the number of files.
An observation is never an upstream update (eager automation reads materializations), so a
rollback seen here never promotes anything.

Each environment after the first also has a non-blocking `in_step` check: is the schema
where the environment before it is, or how many revisions behind? The sensor reports it with
the observation; it can be executed on its own too.
"""

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dagster as dg
from alembic.runtime.migration import MigrationContext

from dagster_alembic import sessions, targets
from dagster_alembic.defs.specs import ProjectSpecs
from dagster_alembic.defs.translator import SchemaAsset
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import ProjectSettings

IN_STEP = "in_step"


@dataclass(frozen=True)
class LiveRevision:
    environment: str
    schema: str
    current: str | None  # None: base (nothing applied)
    head: str | None
    behind: int | None  # revisions from current to head; None: current is not in the files

    @property
    def key(self) -> str:
        return f"{self.environment}/{self.schema}"

    def fingerprint(self) -> str:
        return f"{self.current or 'base'}:{self.head or 'base'}"


def lineage(schema: SchemaAsset) -> list[str | None]:
    """The schema's revisions from head down to base (None), following first parents."""
    by_rev = {r.revision: r for r in schema.revisions if r.revision}
    chain: list[str | None] = []
    revision = schema.head
    while revision is not None and revision in by_rev and revision not in chain:
        chain.append(revision)
        downs = [d for d in by_rev[revision].down_revisions if d in by_rev]
        revision = downs[0] if downs else None
    chain.append(None)
    return chain


def distance(schema: SchemaAsset, older: str | None, newer: str | None) -> int | None:
    """How many revisions ``older`` is behind ``newer`` (negative: ahead); None if either is
    not on the schema's line."""
    chain = lineage(schema)
    if older not in chain or newer not in chain:
        return None
    return chain.index(older) - chain.index(newer)


def read_heads(settings: ProjectSettings, environment: str) -> tuple[str, ...]:
    """The revisions in the environment's version table: one connection, one query."""
    url = targets.database_url(settings, environment)
    engine = sessions.create_engine(url, environment, settings.environment(environment))
    try:
        with engine.connect() as conn:
            opts = {
                "version_table": settings.version_table,
                "version_table_schema": settings.version_table_schema,
            }
            return tuple(MigrationContext.configure(conn, opts=opts).get_current_heads())
    finally:
        engine.dispose()


def applied(schemas: Sequence[SchemaAsset], heads: Sequence[str]) -> set[str]:
    """Every revision applied under ``heads``: Alembic stores only heads, and a revision
    another schema's depends_on reached is not stored on its own (as MigrationProject.applied,
    from the scanned files)."""
    parents = {
        r.revision: (*r.down_revisions, *r.depends_on)
        for s in schemas
        for r in s.revisions
        if r.revision
    }
    done: set[str] = set()
    todo = [h for h in heads if h in parents]
    while todo:
        revision = todo.pop()
        if revision not in done:
            done.add(revision)
            todo.extend(p for p in parents[revision] if p in parents)
    return done


def live_revisions(
    schemas: Sequence[SchemaAsset], environment: str, heads: Sequence[str]
) -> list[LiveRevision]:
    """Each schema's newest applied revision, judged against the files."""
    done = applied(schemas, heads)
    found = []
    for schema in schemas:
        current = next((r for r in lineage(schema) if r is None or r in done), None)
        found.append(
            LiveRevision(
                environment,
                schema.schema,
                current,
                schema.head,
                distance(schema, current, schema.head),
            )
        )
    return found


def observation(specs: ProjectSpecs, live: LiveRevision) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=specs.key(live.environment, live.schema),
        description=f"{live.key} is at {live.current or 'base'} (observed in the database)",
        metadata={
            "current_revision": dg.MetadataValue.text(live.current or "base"),
            "head_revision": dg.MetadataValue.text(live.head or "base"),
            "behind_head": dg.MetadataValue.int(live.behind if live.behind is not None else -1),
            "observed": dg.MetadataValue.text("version table, by the revision_observer sensor"),
        },
    )


def in_step_result(
    specs: ProjectSpecs, schema: SchemaAsset, here: LiveRevision, before: LiveRevision
) -> dg.AssetCheckResult:
    """Non-blocking: passes when the schema is where the environment before is; WARN with
    how many revisions behind (or ahead) it is otherwise."""
    gap = distance(schema, here.current, before.current)
    at = f"{here.key} is at {here.current or 'base'}, {before.environment} at "
    at += before.current or "base"
    if gap == 0:
        text = f"{at}: in step"
    elif gap is None:
        text = f"{at}: not on one line of {schema.schema}'s revisions"
    elif gap > 0:
        text = f"{at}: {gap} revision(s) behind {before.environment}"
    else:
        text = f"{at}: {-gap} revision(s) ahead of {before.environment}"
    check = specs.item(here.environment, here.schema).asset.key
    return dg.AssetCheckResult(
        asset_key=check,
        check_name=IN_STEP,
        passed=gap == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=text,
        metadata={
            "behind": dg.MetadataValue.int(gap if gap is not None else -1),
            "current_revision": dg.MetadataValue.text(here.current or "base"),
            f"{before.environment}_revision": dg.MetadataValue.text(before.current or "base"),
        },
    )


def in_step_evaluation(
    specs: ProjectSpecs, schema: SchemaAsset, here: LiveRevision, before: LiveRevision
) -> dg.AssetCheckEvaluation:
    """The same result, reported by the sensor outside any run."""
    result = in_step_result(specs, schema, here, before)
    return dg.AssetCheckEvaluation(
        asset_key=specs.key(here.environment, here.schema),
        check_name=IN_STEP,
        passed=result.passed,
        severity=result.severity,
        description=result.description,
        metadata=result.metadata,
        blocking=False,
    )


def _schemas(specs: ProjectSpecs) -> list[SchemaAsset]:
    first = specs.items[0].props.env
    return [i.props.schema for i in specs.items if i.props.env == first]


def _pairs(specs: ProjectSpecs) -> dict[str, str]:
    """environment -> the environment before it."""
    return {
        i.props.env: i.props.previous_environment
        for i in specs.items
        if i.props.previous_environment is not None
    }


def build_in_step_checks(
    settings: ProjectSettings, specs: ProjectSpecs, name: str = "in_step_checks"
) -> list[dg.AssetChecksDefinition]:
    """One non-blocking `in_step` check per schema of each environment after the first."""
    schemas = {s.schema: s for s in _schemas(specs)}
    before_of = _pairs(specs)
    items = [i for i in specs.items if i.props.previous_environment is not None]
    if not items:
        return []
    check_specs = [
        dg.AssetCheckSpec(
            IN_STEP,
            asset=i.asset.key,
            blocking=False,
            description=f"{i.props.schema.schema} in {i.props.env} is where "
            f"{i.props.previous_environment} is (WARN: how many revisions behind or ahead). "
            "Reported by the revision_observer sensor when either moves.",
        )
        for i in items
    ]

    @dg.multi_asset_check(
        name=name,
        specs=check_specs,
        can_subset=True,
    )
    def in_step(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        wanted = context.selected_asset_check_keys
        cache: dict[str, list[LiveRevision]] = {}

        def live(env: str) -> dict[str, LiveRevision]:
            if env not in cache:
                cache[env] = live_revisions(list(schemas.values()), env, read_heads(settings, env))
            return {r.schema: r for r in cache[env]}

        for i in items:
            if dg.AssetCheckKey(i.asset.key, IN_STEP) not in wanted:
                continue
            schema, env = i.props.schema.schema, i.props.env
            yield in_step_result(
                specs, schemas[schema], live(env)[schema], live(before_of[env])[schema]
            )

    return [in_step]


def build_revision_observer(
    settings: ProjectSettings, specs: ProjectSpecs, name: str = "revision_observer"
) -> dg.SensorDefinition:
    schemas = _schemas(specs)
    by_name = {s.schema: s for s in schemas}
    environments = list(dict.fromkeys(i.props.env for i in specs.items))
    before_of = _pairs(specs)

    @dg.sensor(
        name=name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reads each environment's version table (one query per environment) and "
        "reports each schema's live revision as an observation when it changed, e.g. after "
        "`migrate upgrade` or plain `alembic`, with the in_step check of the environments "
        "after the first. Never starts a run; an observation never promotes.",
    )
    def revision_observer(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # cursor: {"env/schema": "current:head"}; one entry per environment and schema
        previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        live: dict[str, dict[str, LiveRevision]] = {}
        unreachable = []
        for env in environments:
            try:
                heads = read_heads(settings, env)
            except ConfigurationError as exc:
                unreachable.append(f"{env}: {exc}")
                continue
            except Exception as exc:  # a server down must not stop the others' observation
                unreachable.append(f"{env}: {sessions.error_text(exc)}")
                continue
            live[env] = {r.schema: r for r in live_revisions(schemas, env, heads)}
        events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
        # entries of environments not read this tick stay; nothing else (bounded)
        current = {k: v for k, v in previous.items() if k.split("/")[0] not in live}
        for env, by_schema in live.items():
            for schema, here in by_schema.items():
                before = live.get(before_of.get(env, ""), {}).get(schema)
                moved = previous.get(here.key) != here.fingerprint()
                before_moved = before is not None and previous.get(before.key) != (
                    before.fingerprint()
                )
                if moved:
                    events.append(observation(specs, here))
                if before is not None and (moved or before_moved):
                    events.append(in_step_evaluation(specs, by_name[schema], here, before))
                current[here.key] = here.fingerprint()
        for line in unreachable:
            context.log.warning(f"not observed: {line}")
        skip = None
        if not events:
            skip = "no revision moved" + (
                f"; not observed: {'; '.join(unreachable)}" if unreachable else ""
            )
        return dg.SensorResult(
            asset_events=events, cursor=json.dumps(current, sort_keys=True), skip_reason=skip
        )

    return revision_observer
