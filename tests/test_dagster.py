"""The Dagster layer against a real PostgreSQL and a real (persistent, temporary) instance."""

from __future__ import annotations

import json
import os
import time

import dagster as dg
import pytest
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace, simple_revision

from dagster_alembic.definitions import build_definitions


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def defs(workspace: Workspace) -> dg.Definitions:
    return build_definitions(str(workspace.ini))


def _key(env: str, schema: str) -> dg.AssetKey:
    return dg.AssetKey([env, schema])


def test_definitions_load_with_the_promotion_graph(defs):
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    assert parents == {
        "dev/ecommerce": set(),
        "dev/analytics": {"dev/ecommerce"},
        "staging/ecommerce": {"dev/ecommerce"},
        "staging/analytics": {"dev/analytics", "staging/ecommerce"},
        "prod/ecommerce": {"staging/ecommerce"},
        "prod/analytics": {"staging/analytics", "prod/ecommerce"},
    }
    verify = [c for c in graph.asset_check_keys if c.name == "verify"]
    assert {c.to_user_string() for c in verify} == {f"{k}:verify" for k in parents}
    assert all(graph.get_check_spec(c).blocking for c in verify)
    # policy from migrate.toml: staging follows dev on its own, prod only by a launch
    assert graph.get(_key("staging", "ecommerce")).automation_condition is not None
    assert graph.get(_key("prod", "ecommerce")).automation_condition is None
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "migrate",
        "rollback",
        "promote",
        "environment_sync",
    }


def test_a_new_schema_folder_becomes_assets_without_code(workspace: Workspace):
    folder = workspace.versions / "billing"
    folder.mkdir()
    ini = workspace.ini.read_text().replace(
        "%(here)s/migrations/versions/analytics",
        "%(here)s/migrations/versions/analytics\n    %(here)s/migrations/versions/billing",
    )
    workspace.ini.write_text(ini)
    keys = build_definitions(str(workspace.ini)).resolve_asset_graph().get_all_asset_keys()
    assert {_key(env, "billing") for env in ("dev", "staging", "prod")} <= keys


def test_materialize_dev_schemas_writes_audit_rows_with_the_run_id(defs, instance, workspace):
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, asset_selection=[_key("dev", "ecommerce"), _key("dev", "analytics")]
    )

    assert result.success
    rows = workspace.audit()
    migrations = [r for r in rows if r.operation == "migration"]
    assert len(migrations) == 7
    assert {r.run_id for r in rows} == {result.run_id}
    assert {r.schema_name for r in rows if r.operation == "verify"} == {"ecommerce", "analytics"}
    event = instance.get_latest_materialization_event(_key("dev", "ecommerce"))
    meta = event.asset_materialization.metadata
    assert meta["current_revision"].value == ECOMMERCE_HEAD
    assert "CREATE TABLE ecommerce.customers" in meta["sql"].value
    applied = meta["revisions_applied"].value.records
    assert [r.data["to"] for r in applied][-1] == ECOMMERCE_HEAD
    assert meta["audit_row_ids"].value == ", ".join(
        str(r.id) for r in migrations if r.schema_name == "ecommerce"
    )
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(_key("dev", "analytics"), "verify")]
    )
    assert check[dg.AssetCheckKey(_key("dev", "analytics"), "verify")].status.value == "SUCCEEDED"
    assert workspace.version_heads("staging") == set()


def test_promote_carries_schemas_through_every_environment(defs, instance, workspace):
    result = defs.resolve_job_def("promote").execute_in_process(instance=instance)
    assert result.success
    for env in ("dev", "staging", "prod"):
        assert workspace.version_heads(env) == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
        assert {r.run_id for r in workspace.audit(env)} == {result.run_id}


def test_failed_verify_in_dev_stops_staging_and_prod_in_the_same_run(workspace, instance):
    body = simple_revision("nocheck00001", ECOMMERCE_HEAD, "never_filled")
    body += "\n\ndef verify(connection):\n    return 'never_filled has no rows'\n"
    workspace.add_revision("ecommerce", "2024_03_02_0900-nocheck00001_add.py", body)
    defs = build_definitions(str(workspace.ini))

    result = defs.resolve_job_def("promote").execute_in_process(
        instance=instance, raise_on_error=False
    )

    assert not result.success
    assert "nocheck00001" in workspace.version_heads("dev")
    # nothing reached staging or prod: no tables, no version rows, no audit rows
    for env in ("staging", "prod"):
        assert workspace.version_heads(env) == set()
        assert workspace.audit(env) == []
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert _key("staging", "ecommerce") not in materialized


def test_migrate_job_runs_with_no_config(defs, instance, workspace):
    result = defs.resolve_job_def("migrate").execute_in_process(instance=instance)
    assert result.success
    assert workspace.version_heads() == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    rows = workspace.audit()
    assert {r.run_id for r in rows} == {result.run_id}
    assert [r.operation for r in rows].count("verify") == 2
    # the job's steps show on the schema assets and their verify checks too
    assert instance.get_latest_materialization_event(_key("dev", "analytics")) is not None
    check_key = dg.AssetCheckKey(_key("dev", "ecommerce"), "verify")
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])
    assert latest[check_key].run_id == result.run_id
    assert latest[check_key].status.value == "SUCCEEDED"
    # every step has its line in the run's log, grouped: an event-log write per step
    # would cost more than the steps (at most one event a second while steps run)
    step_logs = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.step_key == "upgrade.dev" and e.dagster_event is None
    ]
    lines = [line for message in step_logs for line in message.splitlines()]
    steps = [line for line in lines if " migration " in line]
    assert [line.split()[4] for line in steps] == [r.alembic_version for r in rows[:7]]
    assert len(step_logs) < len(lines)
    # and what promotion decided for each schema, before its steps
    assert f"dev/ecommerce: first environment, upgrading base to head {ECOMMERCE_HEAD}" in lines


def test_rollback_job_writes_rollback_rows(defs, instance, workspace):
    assert defs.resolve_job_def("migrate").execute_in_process(instance=instance).success
    result = defs.resolve_job_def("rollback").execute_in_process(
        instance=instance,
        run_config=dg.RunConfig(
            ops={"downgrade": {"config": {"schema_name": "analytics", "to": "-1"}}}
        ),
    )
    assert result.success
    rollback = [r for r in workspace.audit() if r.operation == "rollback"]
    assert len(rollback) == 1 and rollback[0].run_id == result.run_id
    assert rollback[0].prev_alembic_version == ANALYTICS_HEAD
    verify_after = [
        r for r in workspace.audit() if r.run_id == result.run_id and r.operation == "verify"
    ]
    assert [r.success for r in verify_after] == [True]  # verified where it stands


def test_rollback_job_requires_schema_and_target(defs):
    job = defs.resolve_job_def("rollback")
    with pytest.raises(dg.DagsterInvalidConfigError):
        job.execute_in_process(run_config={})


def test_failed_migration_run_names_revision_and_cause(workspace, instance):
    from conftest import failing_revision

    workspace.add_revision(
        "ecommerce",
        "2024_03_01_0900-bad000000001_boom.py",
        failing_revision("bad000000001", ECOMMERCE_HEAD, "boom"),
    )
    defs = build_definitions(str(workspace.ini))
    result = defs.resolve_job_def("migrate").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    first_line = failure.step_failure_data.user_failure_data.description.splitlines()[0]
    assert "bad000000001" in first_line and "division by zero" in first_line
    failed = workspace.audit()[-1]
    assert failed.success is False and failed.run_id == result.run_id


# --- the sensor ----------------------------------------------------------------------------


def _tick(defs, instance, cursor):
    sensor = defs.resolve_sensor_def("revision_files_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = sensor(context)
    return result, context.cursor


def test_revision_files_sensor(workspace: Workspace, instance):
    defs = build_definitions(str(workspace.ini))
    first, cursor = _tick(defs, instance, None)
    assert isinstance(first, dg.SkipReason) and "first tick" in first.skip_message
    # bounded: per schema, not per file (tests/test_sensor_scale.py)
    assert sum(s["files"] for s in json.loads(cursor)["schemas"].values()) == 7

    quiet, cursor = _tick(defs, instance, cursor)
    assert isinstance(quiet, dg.SkipReason) and "no new" in quiet.skip_message

    path = workspace.add_revision(
        "ecommerce",
        "2024_03_02_0900-new000000001_add.py",
        simple_revision("new000000001", ECOMMERCE_HEAD, "wishlists"),
    )
    new, cursor = _tick(defs, instance, cursor)
    (request,) = new.run_requests
    assert request.asset_selection == [_key("dev", "ecommerce")]
    assert request.run_key.startswith("ecommerce:new000000001@")
    first_key = request.run_key

    again, cursor = _tick(defs, instance, new.cursor)
    assert isinstance(again, dg.SkipReason)

    path.write_text(path.read_text() + "\n# reviewed\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    edited, cursor = _tick(defs, instance, again_cursor := cursor)
    assert again_cursor
    (request,) = edited.run_requests
    assert request.run_key != first_key and "new000000001" in request.run_key

    workspace.add_revision("analytics", "2024_03_03_0900-broken000001_x.py", "def upgrade(:\n")
    broken, cursor = _tick(defs, instance, edited.cursor)
    assert isinstance(broken, dg.SkipReason)
    assert "broken000001_x.py" in broken.skip_message and "analytics" in broken.skip_message
    # named again at the next tick: a broken file stays visible until it is fixed
    still, _ = _tick(defs, instance, cursor)
    assert isinstance(still, dg.SkipReason) and "broken000001_x.py" in still.skip_message


def test_sensor_run_applies_the_new_revision_in_dev(workspace: Workspace, instance):
    defs = build_definitions(str(workspace.ini))
    _, cursor = _tick(defs, instance, None)
    workspace.add_revision(
        "ecommerce",
        "2024_03_02_0900-new000000001_add.py",
        simple_revision("new000000001", ECOMMERCE_HEAD, "wishlists"),
    )
    result, _ = _tick(build_definitions(str(workspace.ini)), instance, cursor)
    (request,) = result.run_requests
    job = build_definitions(str(workspace.ini)).resolve_implicit_global_asset_job_def()
    run = job.execute_in_process(instance=instance, asset_selection=request.asset_selection)
    assert run.success
    assert "wishlists" in workspace.tables("ecommerce")
    assert workspace.version_heads("staging") == set()


# --- the schedule --------------------------------------------------------------------------


def test_environment_sync_schedule(defs, instance):
    schedule = defs.resolve_schedule_def("environment_sync")
    request = schedule(dg.build_schedule_context(instance=instance))
    assert isinstance(request, dg.RunRequest)
    assert request.tags["migrate/trigger"] == "environment_sync"

    instance.add_run(
        dg.DagsterRun(job_name="migrate", run_id="active-run", status=dg.DagsterRunStatus.STARTED)
    )
    skipped = schedule(dg.build_schedule_context(instance=instance))
    assert isinstance(skipped, dg.SkipReason) and "active-run" in skipped.skip_message


def test_environment_sync_job_upgrades_auto_environments_and_verifies_prod(
    defs, instance, workspace
):
    job = defs.resolve_job_def("environment_sync")
    job.execute_in_process(instance=instance, raise_on_error=False)
    assert workspace.version_heads("dev") == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert workspace.version_heads("staging") == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    assert workspace.version_heads("prod") == set()  # manual: verified, never upgraded

    # staging is now at head and verified: prod, still at base, is behind its promotion
    # target, and its verify says so (the audit row too)
    second = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not second.success  # prod is behind: its verify fails, visibly
    prod_verify = [
        r for r in workspace.audit("prod") if r.operation == "verify" and r.run_id == second.run_id
    ]
    assert {r.schema_name for r in prod_verify} == {"ecommerce", "analytics"}
    assert not any(r.success for r in prod_verify)
    evaluation = next(
        e.asset_check_evaluation_data
        for e in second.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.asset_check_evaluation_data.asset_key == _key("prod", "ecommerce")
        and e.asset_check_evaluation_data.check_name == "verify"
    )
    assert not evaluation.passed
    assert f"behind {ECOMMERCE_HEAD}, where staging is and verified it" in (
        evaluation.description or ""
    )
    assert workspace.version_heads("prod") == set()


# --- declarative automation: promote = "auto" --------------------------------------------


def test_staging_follows_a_verified_dev_and_prod_never_does(defs, instance, workspace):
    # the daemon evaluates on every tick: a first evaluation is the baseline
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert baseline.total_requested == 0
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(
        instance=instance, asset_selection=[_key("dev", "ecommerce")]
    ).success

    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)

    assert result.get_num_requested(_key("staging", "ecommerce")) == 1
    assert result.get_num_requested(_key("prod", "ecommerce")) == 0
    assert result.get_num_requested(_key("staging", "analytics")) == 0  # dev/analytics not run


def test_staging_does_not_follow_a_dev_that_failed_verify(workspace, instance):
    body = simple_revision("nocheck00001", ECOMMERCE_HEAD, "never_filled")
    body += "\n\ndef verify(connection):\n    return 'never_filled has no rows'\n"
    workspace.add_revision("ecommerce", "2024_03_02_0900-nocheck00001_add.py", body)
    defs = build_definitions(str(workspace.ini))
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[_key("dev", "ecommerce")], raise_on_error=False
    )

    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)

    assert result.get_num_requested(_key("staging", "ecommerce")) == 0
    assert result.total_requested == 0


# --- a rollback is not an upstream update ---------------------------------------------------


def test_a_dev_rollback_is_observed_never_promoted_and_its_check_is_not_a_pass_at_head(
    defs, instance, workspace
):
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert defs.resolve_job_def("migrate").execute_in_process(instance=instance).success
    after_migrate = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=baseline.cursor
    )
    assert after_migrate.get_num_requested(_key("staging", "ecommerce")) == 1  # an update

    rollback = defs.resolve_job_def("rollback").execute_in_process(
        instance=instance,
        run_config={"ops": {"downgrade": {"config": {"schema_name": "ecommerce", "to": "-1"}}}},
    )
    assert rollback.success

    # recorded as an observation of dev/analytics, not a materialization ...
    latest = instance.get_latest_materialization_event(_key("dev", "ecommerce"))
    assert latest.run_id != rollback.run_id
    (observation,) = [
        e.event_specific_data.asset_observation
        for e in rollback.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observation.asset_key == _key("dev", "ecommerce")
    assert observation.metadata["operation"].value == "rollback"
    assert observation.metadata["current_revision"].value == "fac149d9b774"
    # ... so promotion automation does not carry it to staging
    after_rollback = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=after_migrate.cursor
    )
    assert after_rollback.total_requested == 0

    # the check verified where the schema stands, but never reads as passing at head
    check_key = dg.AssetCheckKey(_key("dev", "ecommerce"), "verify")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[
        check_key
    ]
    assert record.run_id == rollback.run_id
    evaluation = record.event.dagster_event.asset_check_evaluation_data
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert f"taken to fac149d9b774, head is {ECOMMERCE_HEAD}" in evaluation.description
    # the audit row records the verify of where it stands: files, drift and hooks passed
    verify_rows = [
        r for r in workspace.audit() if r.run_id == rollback.run_id and r.operation == "verify"
    ]
    assert [(r.alembic_version, r.success) for r in verify_rows] == [("fac149d9b774", True)]


# --- Dagster-level serialization: the jobs' steps join the environment's pool ---------------


def test_migrate_and_rollback_steps_wait_for_their_environments_pool(workspace):
    import threading

    defs = build_definitions(str(workspace.ini))
    for job_name, step in (("migrate", "upgrade"), ("rollback", "downgrade")):
        job = defs.resolve_job_def(job_name)
        pools = {node.name: node.pool for node in job.all_node_defs if node.name.endswith("_dev")}
        assert pools == {f"{step}_dev": "migrate_dev", "verify_dev": "migrate_dev"}
        staging = {n.name: n.pool for n in job.all_node_defs if n.name.endswith("_staging")}
        assert set(staging.values()) == {"migrate_staging"}

    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        storage = instance.event_log_storage
        # another run holds staging's only slot
        storage.initialize_concurrency_limit_to_default("migrate_staging")
        assert storage.claim_concurrency_slot(
            "migrate_staging", "other-run", "other-step"
        ).is_claimed
        outcome = {}

        def launch():
            outcome["result"] = defs.resolve_job_def("migrate").execute_in_process(
                instance=instance,
                run_config={"ops": {"upgrade": {"config": {"environment": "staging"}}}},
            )

        thread = threading.Thread(target=launch)
        thread.start()
        deadline = time.monotonic() + 30
        while not storage.get_concurrency_info("migrate_staging").pending_run_ids:
            assert time.monotonic() < deadline, "the step never queued for the pool"
            time.sleep(0.1)
        time.sleep(1)
        assert thread.is_alive()  # waiting for the slot, not migrating
        assert workspace.audit("staging") == []
        storage.free_concurrency_slot_for_step("other-run", "other-step")
        thread.join(60)
        assert outcome["result"].success
        assert storage.get_concurrency_info("migrate_staging").claimed_slots == []


# --- promotion through Dagster ---------------------------------------------------------------

NEW = "new000000001"
NEW_FILE = f"2024_03_02_0900-{NEW}_add.py"


def _materialization(result, key):
    (event,) = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
        and e.event_specific_data.materialization.asset_key == key
    ]
    return event


def _evaluation(result, key):
    (evaluation,) = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.asset_check_evaluation_data.asset_key == key
        and e.asset_check_evaluation_data.check_name == "verify"
    ]
    return evaluation


def test_prod_alone_goes_no_further_than_staging_and_promote_carries_a_new_file_through(
    workspace, instance
):
    defs = build_definitions(str(workspace.ini))
    assert defs.resolve_job_def("promote").execute_in_process(instance=instance).success
    workspace.add_revision("ecommerce", NEW_FILE, simple_revision(NEW, ECOMMERCE_HEAD, "wish"))
    defs = build_definitions(str(workspace.ini))
    job = defs.resolve_implicit_global_asset_job_def()

    prod_alone = job.execute_in_process(
        instance=instance, asset_selection=[_key("prod", "ecommerce")]
    )

    assert prod_alone.success
    assert workspace.version_heads("prod") == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    meta = _materialization(prod_alone, _key("prod", "ecommerce")).metadata
    assert meta["promoted_to"].value == "nothing to do"
    assert meta["reason"].value.startswith(
        f"prod/ecommerce is at {ECOMMERCE_HEAD}: staging is at {ECOMMERCE_HEAD}, verified at "
    )
    # prod is where promotion takes it: its check passes though a newer file exists
    assert _evaluation(prod_alone, _key("prod", "ecommerce")).passed

    promote = defs.resolve_job_def("promote").execute_in_process(instance=instance)

    assert promote.success
    for env in ("dev", "staging", "prod"):
        assert workspace.version_heads(env) == {NEW, ANALYTICS_HEAD}
    staging = _materialization(promote, _key("staging", "ecommerce")).metadata
    assert staging["promoted_to"].value == NEW
    assert staging["reason"].value.startswith(f"staging/ecommerce: dev is at {NEW}, verified at ")
    logs = [e.user_message for e in instance.all_logs(promote.run_id) if e.dagster_event is None]
    assert any(m.startswith(f"prod/ecommerce: staging is at {NEW}, verified at ") for m in logs)


def test_staging_does_not_move_past_a_dev_whose_verify_failed(workspace, instance):
    defs = build_definitions(str(workspace.ini))
    assert defs.resolve_job_def("promote").execute_in_process(instance=instance).success
    workspace.add_revision("ecommerce", NEW_FILE, simple_revision(NEW, ECOMMERCE_HEAD, "wish"))
    job = build_definitions(str(workspace.ini)).resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(
        instance=instance, asset_selection=[_key("dev", "ecommerce")]
    ).success
    with workspace.connect("dev") as conn:  # drift in dev, found by its next verify
        conn.exec_driver_sql("CREATE TABLE ecommerce.by_hand (id int)")
        conn.commit()
    dev_again = job.execute_in_process(
        instance=instance, asset_selection=[_key("dev", "ecommerce")], raise_on_error=False
    )
    assert not _evaluation(dev_again, _key("dev", "ecommerce")).passed

    staging = job.execute_in_process(
        instance=instance, asset_selection=[_key("staging", "ecommerce")]
    )

    assert staging.success
    assert workspace.version_heads("staging") == {ECOMMERCE_HEAD, ANALYTICS_HEAD}
    meta = _materialization(staging, _key("staging", "ecommerce")).metadata
    assert meta["promoted_to"].value == "nothing to do"
    assert f"dev is at {NEW} but its last verify failed" in meta["reason"].value


# --- nothing to do is success: every entry point, twice, in every state -----------------------

STATES = ("fresh", "at_head", "behind", "drift")
ENTRY_POINTS = (
    "migrate",
    "promote",
    "rollback",
    "environment_sync",
    "fleet_dev",
    "assets",
    "sensor",
)
ENVS = ("dev", "staging", "prod")


@pytest.fixture(scope="module")
def state_templates(server_url, tmp_path_factory):
    """Databases of dev, staging and prod in each state, copied (CREATE DATABASE ... TEMPLATE)
    for every test: fresh; at head and verified; behind (ecommerce at fac149d9b774, analytics
    at 54886dd283f2) and verified; at head, verified, then changed by hand (drift)."""
    import shutil

    from conftest import REPO, Databases

    from dagster_alembic import engine

    root = tmp_path_factory.mktemp("templates")
    for name in ("alembic.ini", "migrate.toml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "migrations", root / "migrations")
    dbs = Databases(server_url)
    templates = {}
    with pytest.MonkeyPatch.context() as mp:
        for state in STATES:
            urls = {env: dbs.create(f"tpl_{state}_{env}") for env in ENVS}
            for env, url in urls.items():
                mp.setenv(f"{env.upper()}_DATABASE_URL", url.render_as_string(False))
            project = Workspace(root, urls).project()
            for env in ENVS if state != "fresh" else ():
                to = "54886dd283f2" if state == "behind" else None
                assert engine.upgrade(project, env, to=to).ok
                assert all(r.ok for r in engine.verify(project, env, expect_head=False))
                if state == "drift":
                    with Workspace(root, urls).connect(env) as conn:
                        conn.exec_driver_sql("CREATE TABLE ecommerce.by_hand (id int)")
                        conn.commit()
            templates[state] = {env: url.database for env, url in urls.items()}
    yield templates
    dbs.drop_all()


def _in_state(workspace, databases, monkeypatch, templates, state):
    """Point the workspace's environments at fresh copies of the state's databases."""
    import sqlalchemy as sa

    admin = sa.create_engine(databases.server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        for env in ENVS:
            name = f"{env}_{state}_{os.urandom(4).hex()}"
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{templates[state][env]}"')
            databases.created.append(name)
            workspace.urls[env] = databases.server.set(database=name)
            monkeypatch.setenv(
                f"{env.upper()}_DATABASE_URL", workspace.urls[env].render_as_string(False)
            )
    admin.dispose()


def _failures(result) -> list[str]:
    """Each failed step as 'step: error class: message'."""
    out = []
    for e in result.all_events:
        if e.event_type_value == "STEP_FAILURE":
            error = e.step_failure_data.error
            data = e.step_failure_data.user_failure_data
            out.append(
                f"{e.step_key}: {error.cls_name if error else ''}: "
                f"{(data.description if data else None) or (error.message if error else '')}"
            )
    return out


def _only_verify_failed(result) -> bool:
    """A failed run failed through verify (a finding), never through a crash."""
    failures = _failures(result)
    failed_checks = [
        e
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and not e.asset_check_evaluation_data.passed
        and e.asset_check_evaluation_data.severity == dg.AssetCheckSeverity.ERROR
    ]
    fleet_targets_failed = [
        e.event_specific_data.metadata["targets_table"].value
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT" and e.step_key.startswith("fleet_summary_")
    ]
    verify_failures = [
        f
        for f in failures
        if ": Failure: verify failed for " in f  # a job's verify step
        or ("_verify:" in f and "DagsterAssetCheckFailedError" in f)  # a blocking check
        # the fleet's summary, every failed target failed its verify
        or (
            "fleet target(s) failed" in f
            and all(
                "| failed | 0 | verify: " in line
                for table in fleet_targets_failed
                for line in table.splitlines()
                if "| failed |" in line
            )
        )
    ]
    return bool(failed_checks or verify_failures) and len(verify_failures) == len(failures)


def _entry_point_runs(name, workspace, instance):
    """Run the entry point twice in a row; yields each run's result."""
    defs = build_definitions(str(workspace.ini))
    if name == "assets":
        job = defs.resolve_implicit_global_asset_job_def()
        for env in ENVS:
            for schema in ("ecommerce", "analytics"):
                for _ in range(2):
                    yield job.execute_in_process(
                        instance=instance, asset_selection=[_key(env, schema)], raise_on_error=False
                    )
        return
    if name == "sensor":
        _, cursor = _tick(defs, instance, None)
        workspace.add_revision(
            "ecommerce", NEW_FILE, simple_revision(NEW, ECOMMERCE_HEAD, "wishlists")
        )
        defs = build_definitions(str(workspace.ini))
        result, _ = _tick(defs, instance, cursor)
        (request,) = result.run_requests
        job = defs.resolve_implicit_global_asset_job_def()
        for _ in range(2):
            yield job.execute_in_process(
                instance=instance, asset_selection=request.asset_selection, raise_on_error=False
            )
        return
    config = None
    if name == "rollback":
        config = {"ops": {"downgrade": {"config": {"schema_name": "analytics", "to": "base"}}}}
    for _ in range(2):
        yield defs.resolve_job_def(name).execute_in_process(
            instance=instance, run_config=config, raise_on_error=False
        )


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_twice_in_every_state(
    entry_point, state, workspace, databases, monkeypatch, state_templates
):
    _in_state(workspace, databases, monkeypatch, state_templates, state)
    if entry_point == "fleet_dev":  # the dev database itself, as the fleet's one target
        path = workspace.root / "migrate.toml"
        path.write_text(
            path.read_text()
            + f'\n[environments.dev.fleet]\ndatabases = ["{workspace.urls["dev"].database}"]\n'
        )
    # prod is manual: behind staging's verified revision, environment_sync's verify of prod
    # fails (visibly); drift fails verify wherever it is checked
    may_fail_verify = state == "drift" or entry_point == "environment_sync"
    instance = dg.DagsterInstance.ephemeral()
    for result in _entry_point_runs(entry_point, workspace, instance):
        if not result.success:
            assert may_fail_verify, _failures(result)
            assert _only_verify_failed(result), _failures(result)


def test_the_sensors_run_after_an_applied_file_is_edited_reports_the_tamper_through_verify(
    workspace, instance
):
    defs = build_definitions(str(workspace.ini))
    assert defs.resolve_job_def("promote").execute_in_process(instance=instance).success
    _, cursor = _tick(defs, instance, None)
    (path,) = (workspace.versions / "ecommerce").glob("*07e0f754c9d8*.py")
    path.write_text(path.read_text() + "\n# edited after it was applied\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    tick, _ = _tick(build_definitions(str(workspace.ini)), instance, cursor)
    (request,) = tick.run_requests
    assert request.asset_selection == [_key("dev", "ecommerce")]
    job = build_definitions(str(workspace.ini)).resolve_implicit_global_asset_job_def()

    for _ in range(2):
        run = job.execute_in_process(
            instance=instance, asset_selection=request.asset_selection, raise_on_error=False
        )
        assert not run.success and _only_verify_failed(run), _failures(run)
        meta = _materialization(run, _key("dev", "ecommerce")).metadata  # nothing to do
        assert meta["promoted_to"].value == "nothing to do" and meta["steps"].value == 0
        evaluation = _evaluation(run, _key("dev", "ecommerce"))
        assert not evaluation.passed
        assert f"{path.name} (revision 07e0f754c9d8) was edited after it was applied" in (
            evaluation.description
        )


def test_each_schema_assets_code_version_follows_its_revision_files(workspace: Workspace):
    """DESIGN contract: a new or edited revision file is a new code version, so Dagster
    shows the asset as changed before any run; the materialization records the version."""

    def versions() -> dict[str, str | None]:
        graph = build_definitions(str(workspace.ini)).resolve_asset_graph()
        return {
            key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()
        }

    before = versions()
    assert before["dev/ecommerce"].startswith(f"{ECOMMERCE_HEAD}-")
    assert before["dev/ecommerce"] == before["prod/ecommerce"]  # same files, same version
    assert before["dev/analytics"].startswith(f"{ANALYTICS_HEAD}-")

    with dg.instance_for_test() as instance:
        defs = build_definitions(str(workspace.ini))
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["dev", "ecommerce"])]
        )
        assert result.success
        recorded = instance.get_latest_materialization_event(dg.AssetKey(["dev", "ecommerce"]))
        assert (
            recorded.asset_materialization.tags["dagster/code_version"] == (before["dev/ecommerce"])
        )

    path = workspace.add_revision(
        "ecommerce",
        "2024_06_01_0900-c0de00000001_new.py",
        simple_revision("c0de00000001", ECOMMERCE_HEAD, "code_versioned"),
    )
    added = versions()
    assert added["dev/ecommerce"].startswith("c0de00000001-")
    assert added["dev/analytics"] == before["dev/analytics"]  # another schema's files

    path.write_text(path.read_text() + "\n# edited\n")
    assert versions()["dev/ecommerce"] not in (added["dev/ecommerce"], before["dev/ecommerce"])


# --- issue 14: revision state in the UI, true and actionable ---------------------------------


def _observe(defs, instance, cursor):
    sensor = defs.resolve_sensor_def("revision_observer")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = sensor(context)
    return result, result.cursor


def _observed(result) -> dict[str, str]:
    return {
        e.asset_key.to_user_string(): e.metadata["current_revision"].value
        for e in result.asset_events
        if isinstance(e, dg.AssetObservation)
    }


def test_the_observer_reports_changes_made_outside_dagster_and_never_promotes(
    defs, instance, workspace
):
    from dagster_alembic import engine

    first, cursor = _observe(defs, instance, None)
    assert _observed(first) == {
        f"{env}/{schema}": "base"
        for env in ("dev", "staging", "prod")
        for schema in ("ecommerce", "analytics")
    }
    # the cursor holds one short entry per (environment, schema), whatever the files
    assert len(json.loads(cursor)) == 6 and len(cursor) < 400
    quiet, cursor = _observe(defs, instance, cursor)
    assert quiet.asset_events == [] and "no revision moved" in quiet.skip_reason.skip_message

    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    project = workspace.project()
    assert engine.upgrade(project, "dev").ok  # the CLI's engine, no Dagster run
    moved, cursor = _observe(defs, instance, cursor)
    assert _observed(moved) == {"dev/ecommerce": ECOMMERCE_HEAD, "dev/analytics": ANALYTICS_HEAD}
    event = next(e for e in moved.asset_events if isinstance(e, dg.AssetObservation))
    assert event.metadata["behind_head"].value == 0
    # staging is now behind dev: its in_step check says by how much, without blocking
    in_step = {
        e.asset_key.to_user_string(): e
        for e in moved.asset_events
        if isinstance(e, dg.AssetCheckEvaluation)
    }
    assert not in_step["staging/ecommerce"].passed
    assert in_step["staging/ecommerce"].severity == dg.AssetCheckSeverity.WARN
    assert "5 revision(s) behind dev" in in_step["staging/ecommerce"].description

    assert engine.downgrade(project, "dev", schemas=["ecommerce"], to="-1").ok
    back, _ = _observe(defs, instance, cursor)
    assert _observed(back) == {"dev/ecommerce": "fac149d9b774"}
    # reported as the daemon does, then: observations are never upstream updates
    for e in (*moved.asset_events, *back.asset_events):
        instance.report_runless_asset_event(e)
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    assert after.total_requested == 0
    assert instance.get_latest_materialization_event(_key("dev", "ecommerce")) is None


def test_the_in_step_check_runs_on_its_own_too(defs, instance, workspace):
    from dagster_alembic import engine

    assert engine.upgrade(workspace.project(), "dev").ok
    key = dg.AssetCheckKey(_key("prod", "analytics"), "in_step")
    only = dg.define_asset_job("in_step_only", selection=dg.AssetSelection.checks(key))
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[only])).resolve_job_def("in_step_only")
    result = job.execute_in_process(instance=instance)
    assert result.success  # WARN: never fails a run
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed  # prod and staging both at base
    assert evaluation.description == "prod/analytics is at base, staging at base: in step"


def _step_failures(result) -> list[str]:
    return [
        e.step_failure_data.user_failure_data.description
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    ]


def test_a_failed_verify_names_its_finding_first_on_the_asset_and_the_job_path(workspace, instance):
    body = simple_revision("nocheck00001", ECOMMERCE_HEAD, "never_filled")
    body += "\n\ndef verify(connection):\n    return 'never_filled has no rows'\n"
    workspace.add_revision("ecommerce", "2024_03_02_0900-nocheck00001_add.py", body)
    defs = build_definitions(str(workspace.ini))
    finding = "verify failed for dev/ecommerce: nocheck00001 verify(): never_filled has no rows"

    asset_run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[_key("dev", "ecommerce")], raise_on_error=False
    )
    job_run = defs.resolve_job_def("migrate").execute_in_process(
        instance=instance, raise_on_error=False
    )

    for run in (asset_run, job_run):
        (first,) = _step_failures(run)
        assert first.splitlines()[0] == finding
        # the run's own failure carries the step's error: its message names the finding
        failure = next(
            e.dagster_event
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
        )
        assert finding in failure.job_failure_data.error.message
        evaluation = _evaluation(run, _key("dev", "ecommerce"))
        assert not evaluation.passed
        kinds = evaluation.metadata["checks"].value
        assert "| hooks | **failed** | nocheck00001 verify(): never_filled has no rows |" in kinds
        assert "| drift | passed |  |" in kinds
        assert evaluation.metadata["audit_row_id"].value.isdigit()  # text: not plotted


def test_the_rollback_launchpad_offers_choices(defs, instance, workspace, monkeypatch):
    job = defs.resolve_job_def("rollback")
    ok = {"schema_name": "analytics", "to": "54886dd283f2", "environment": "staging"}
    assert dg.validate_run_config(job, {"ops": {"downgrade": {"config": ok}}})
    for bad in ({"schema_name": "billing"}, {"environment": "qa"}, {"to": "-2"}):
        with pytest.raises(dg.DagsterInvalidConfigError):
            dg.validate_run_config(job, {"ops": {"downgrade": {"config": {**ok, **bad}}}})
    fields = job.graph.node_named("downgrade").definition.config_mapping.config_schema
    to = fields.config_type.fields["to"]
    values = {v.config_value: v.description for v in to.config_type.enum_values}
    assert values["-1"] == "one revision back" and "base" in values
    assert values["54886dd283f2"].startswith("analytics: ")
    assert "ecommerce: 7afdd87a5e29, 07e0f754c9d8" in to.description
    environments = fields.config_type.fields["environment"].config_type.enum_values
    assert [v.config_value for v in environments] == ["dev", "staging", "prod"]

    # the asset page links the Launchpad, filled for that environment and schema
    from urllib.parse import parse_qs, urlparse

    description = (
        defs.resolve_assets_def(_key("prod", "ecommerce"))
        .specs_by_key[_key("prod", "ecommerce")]
        .description
    )
    link = description.split("back](")[1].split(")")[0]
    assert urlparse(link).path == "/guess/rollback/playground/setup"
    config = parse_qs(urlparse(link).query)["config"][0]
    import yaml

    assert yaml.safe_load(config) == {
        "ops": {
            "downgrade": {"config": {"environment": "prod", "schema_name": "ecommerce", "to": "-1"}}
        }
    }
    assert dg.validate_run_config(job, yaml.safe_load(config))

    # a revision of another schema: one line, no retry
    assert defs.resolve_job_def("migrate").execute_in_process(instance=instance).success
    wrong = job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={
            "ops": {"downgrade": {"config": {**ok, "environment": "dev", "to": "fac149d9b774"}}}
        },
    )
    (message,) = _step_failures(wrong)
    assert "fac149d9b774" in message and len(message.splitlines()) == 1

    # no machine's absolute path as the resource's default: relative to the code location
    monkeypatch.chdir(workspace.root)
    here = build_definitions("alembic.ini")
    assert here.resources["migrations"].alembic_ini == "alembic.ini"


def test_fleet_jobs_only_where_a_fleet_is_configured(workspace):
    names = {j.name for j in build_definitions(str(workspace.ini)).resolve_all_job_defs()}
    assert not any(n.startswith("fleet_") for n in names)
    path = workspace.root / "migrate.toml"
    path.write_text(path.read_text() + '\n[environments.staging.fleet]\ndatabases = ["t1"]\n')
    names = {j.name for j in build_definitions(str(workspace.ini)).resolve_all_job_defs()}
    assert {n for n in names if n.startswith("fleet_")} == {"fleet_staging"}


def test_environment_sync_verifies_every_environment_whatever_the_launch(defs):
    job = defs.resolve_job_def("environment_sync")
    steps = {node.name for node in job.graph.nodes}
    assert {"verify_dev", "verify_staging", "verify_prod"} <= steps
    assert "upgrade_prod" not in steps  # manual: verified, never upgraded
    # an op job: the Launchpad launches every step, no asset or check subset to drop prod
    assert not job.asset_layer.executable_asset_keys


def test_a_materialization_shows_revisions_in_three_columns(defs, instance):
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[_key("dev", "analytics")])
    event = instance.get_latest_materialization_event(_key("dev", "analytics"))
    table = event.asset_materialization.metadata["revisions_applied"].value
    assert [c.name for c in table.schema.columns] == ["to", "message", "ms"]


def test_the_audit_timeline_keeps_steps_of_one_second_apart_and_is_on_each_asset(defs, instance):
    import base64
    import re
    import xml.etree.ElementTree as ET
    from datetime import datetime

    from dagster_alembic.audit import AuditRow
    from dagster_alembic.plot import WIDTH, audit_timeline

    at = datetime(2026, 1, 1, 9, 0, 0)  # one second for all: a whole upgrade often is
    rows = [
        AuditRow(op, rev, None, None, "ecommerce", "dev", ok, id=i, changed_at=at)
        for i, (op, rev, ok) in enumerate(
            [
                ("migration", "a1", True),
                ("migration", "b2", True),
                ("verify", "b2", True),
                ("rollback", "a1", True),
                ("verify", "a1", False),
            ]
        )
    ]
    svg = ET.fromstring(audit_timeline(rows, "t"))
    assert int(svg.get("width")) == WIDTH <= 660  # fits the UI's metadata column
    ns = "{http://www.w3.org/2000/svg}"

    def centre(g) -> tuple[float, float]:
        shape = list(g)[1]
        if shape.tag == f"{ns}circle":
            return float(shape.get("cx")), float(shape.get("cy"))
        numbers = [float(n) for n in re.findall(r"-?[\d.]+", shape.get("points") or shape.get("d"))]
        return sum(numbers[0::2]) / len(numbers[0::2]), sum(numbers[1::2]) / len(numbers[1::2])

    marks = [(g.get("class"), centre(g)) for g in svg.iter(f"{ns}g")]
    assert [c for c, _ in marks] == [
        "mark migration",
        "mark migration",
        "mark verify",
        "mark rollback",
        "mark failed",
    ]
    assert len({x for _, (x, _) in marks}) == 5  # no two marks on one spot
    # verifies on a row of their own, under the changes: a verify never hides a migration
    changes = [y for c, (_, y) in marks if c in ("mark migration", "mark rollback")]
    verifies = [y for c, (_, y) in marks if c in ("mark verify", "mark failed")]
    assert max(changes) + 10 < min(verifies)

    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[_key("dev", "ecommerce")])
    meta = instance.get_latest_materialization_event(_key("dev", "ecommerce")).asset_materialization
    picture = meta.metadata["audit_timeline"].value
    encoded = picture.split("base64,")[1].rstrip(")")
    drawn = ET.fromstring(base64.b64decode(encoded))
    assert [g.get("class") for g in drawn.iter(f"{ns}g")] == ["mark migration"] * 5
