"""Fleet migrations: 21 databases in one Dagster run, one of them failing, then a rerun."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
import sqlalchemy as sa
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace

from dagster_alembic import fleet
from dagster_alembic.definitions import build_definitions


def _fleet_config(workspace: Workspace, body: str) -> None:
    path = workspace.root / "migrate.toml"
    path.write_text(path.read_text() + f"\n[environments.dev.fleet]\n{body}\n")


def _heads(url: sa.engine.URL) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        exists = conn.scalar(sa.text("SELECT to_regclass('public.alembic_version')"))
        heads = (
            {r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))}
            if exists
            else set()
        )
    engine.dispose()
    return heads


@pytest.fixture
def tenants(workspace: Workspace, databases):
    urls = [databases.create("tenant") for _ in range(21)]
    _fleet_config(workspace, "databases = [" + ", ".join(f'"{u.database}"' for u in urls) + "]")
    return urls


def _run(workspace: Workspace, instance, per_step: int = 0) -> dg.ExecuteInProcessResult:
    job = build_definitions(str(workspace.ini)).resolve_job_def("fleet_dev")
    config = {"ops": {"fleet_targets_dev": {"config": {"targets_per_step": per_step}}}}
    return job.execute_in_process(instance=instance, raise_on_error=False, run_config=config)


def _summary(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    event = next(
        e
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT" and e.step_key == "fleet_summary_dev"
    )
    meta = event.event_specific_data.metadata
    return {k: meta[k].value for k in ("targets", "done", "up_to_date", "failed")}


def test_a_fleet_run_migrates_every_target_and_a_rerun_finishes_the_failed_one(
    workspace: Workspace, tenants
):
    broken = tenants[7]
    engine = sa.create_engine(broken, poolclass=sa.NullPool)
    with engine.connect() as conn:  # a hand-made table in the way of revision 07e0f754c9d8
        conn.exec_driver_sql("CREATE SCHEMA ecommerce; CREATE TABLE ecommerce.customers (x int)")
        conn.commit()
    engine.dispose()

    with dg.instance_for_test() as instance:
        first = _run(workspace, instance)

        assert not first.success
        assert _summary(first) == {"targets": 21, "done": 20, "up_to_date": 0, "failed": 1}
        failure = next(e for e in first.all_events if e.event_type_value == "STEP_FAILURE")
        assert broken.database in failure.step_failure_data.user_failure_data.description
        tags = instance.get_run_by_id(first.run_id).tags
        assert (tags["migrate/fleet_done"], tags["migrate/fleet_failed"]) == ("20", "1")
        for url in tenants:
            # the broken one stopped at a revision boundary: its schema revision applied,
            # the customers revision did not
            want = {"7afdd87a5e29"} if url == broken else {ECOMMERCE_HEAD, ANALYTICS_HEAD}
            assert _heads(url) == want, url.database
        assert workspace.version_heads("dev") == set()  # the environment's own database: not
        # part of its fleet

        engine = sa.create_engine(broken, poolclass=sa.NullPool)
        with engine.connect() as conn:
            failed_rows = conn.execute(
                sa.text(
                    "SELECT alembic_version, run_id FROM alembic_version_history WHERE NOT success"
                )
            ).all()
            conn.exec_driver_sql("DROP TABLE ecommerce.customers")
            conn.commit()
        engine.dispose()
        assert failed_rows == [("07e0f754c9d8", first.run_id)]

        rerun = _run(workspace, instance, per_step=1)  # a step per target works the same

        assert rerun.success
        assert _summary(rerun) == {"targets": 21, "done": 1, "up_to_date": 20, "failed": 0}
        assert _heads(broken) == {ECOMMERCE_HEAD, ANALYTICS_HEAD}


def test_fleet_targets_from_a_query(workspace: Workspace, databases):
    prefix = f"q{uuid.uuid4().hex[:6]}"
    urls = [databases.create(prefix) for _ in range(2)]
    _fleet_config(
        workspace,
        f'query = "SELECT datname FROM pg_database '
        f"WHERE datname LIKE '{prefix}\\\\_%' ORDER BY 1\"",
    )
    project = workspace.project()
    assert fleet.targets(project, "dev") == sorted(u.database for u in urls)
    outcome = fleet.migrate_target(project, "dev", urls[0].database)
    assert (outcome.status, outcome.steps) == (fleet.DONE, 7)
    again = fleet.migrate_target(project, "dev", urls[0].database)
    assert again.status == fleet.UP_TO_DATE and again.steps == 0


def test_an_unreachable_target_is_one_failure_not_a_crash(workspace: Workspace):
    _fleet_config(workspace, 'databases = ["no_such_database_here"]')
    outcome = fleet.migrate_target(workspace.project(), "dev", "no_such_database_here")
    assert outcome.status == fleet.FAILED and "cannot connect" in outcome.error


def test_batches_one_step_by_default_or_n_targets_per_step():
    from dagster_alembic.defs.fleet import batches

    names = [f"t{i:02d}" for i in range(21)]
    assert batches(names, 0) == [names]  # default: one step, its pool does the parallel work
    assert batches(names, 1) == [[n] for n in names]
    assert batches(names, 10) == [names[:10], names[10:20], names[20:]]
    assert batches([], 0) == []


def test_fleet_steps_run_in_process_unless_run_config_picks_multiprocess(workspace: Workspace):
    _fleet_config(workspace, 'databases = ["tenant_a"]')  # a fleet job exists only with a fleet
    job = build_definitions(str(workspace.ini)).resolve_job_def("fleet_dev")
    ops = {"ops": {"fleet_targets_dev": {"config": {"processes": 3, "targets_per_step": 5}}}}

    def engine(run_config: dict) -> set[str]:
        (executor,) = dg.validate_run_config(job, run_config)["execution"].values()
        return set(executor)

    assert engine(ops) == {"in_process"}
    assert engine({**ops, "execution": {"config": {"multiprocess": {}}}}) == {"multiprocess"}


def test_the_pool_runs_every_target_and_stopping_it_starts_no_new_one(
    workspace: Workspace, databases
):
    project = workspace.project()
    urls = [databases.create("pool") for _ in range(8)]
    names = [u.database for u in urls]

    outcomes = list(fleet.migrate_targets(project, "dev", names[:3], processes=2))
    assert sorted(o.database for o in outcomes) == sorted(names[:3])
    assert {(o.status, o.steps) for o in outcomes} == {(fleet.DONE, 7)}

    # A run terminated while the pool works: the caller stops reading outcomes.
    rest = fleet.migrate_targets(project, "dev", names[3:], processes=2)
    first = next(rest)
    rest.close()
    assert first.status == fleet.DONE
    untouched = [u for u in urls[3:] if not _heads(u)]
    assert untouched, "every target ran: the pool went on after it was stopped"
    for url in urls[3:]:  # and each one that ran, ran to its end
        assert _heads(url) in (set(), {ECOMMERCE_HEAD, ANALYTICS_HEAD}), url.database


def test_a_worker_that_dies_fails_its_target_and_every_target_gets_an_outcome(
    workspace: Workspace, databases
):
    from conftest import revision_file

    urls = [databases.create("die") for _ in range(4)]
    killer = urls[1].database
    workspace.add_revision(
        "ecommerce",
        "2024_05_01_0900-de4d00000001_exit.py",
        revision_file(
            "de4d00000001",
            ECOMMERCE_HEAD,
            f"    import os\n    if op.get_bind().engine.url.database == {killer!r}:\n"
            "        os._exit(1)  # the worker process dies mid-revision",
        ),
    )

    outcomes = list(
        fleet.migrate_targets(workspace.project(), "dev", [u.database for u in urls], processes=2)
    )

    assert sorted(o.database for o in outcomes) == sorted(u.database for u in urls)
    (died,) = [o for o in outcomes if o.database == killer]
    assert died.status == fleet.FAILED and "worker process died" in died.error
    # its database stopped at a revision boundary: the revision that killed it is not there
    assert "de4d00000001" not in _heads(urls[1])
