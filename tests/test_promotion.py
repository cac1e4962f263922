"""Promotion carries what was verified, never more (engine layer, real PostgreSQL)."""

from __future__ import annotations

from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace, simple_revision

from dagster_alembic import engine, promotion

NEW = "new000000001"
NEW_FILE = f"2024_03_02_0900-{NEW}_add.py"


def _bring(workspace: Workspace, env: str) -> None:
    """What a promote run does for one environment: upgrade as promotion allows, verify."""
    project = workspace.project()
    result, _ = promotion.upgrade(project, env)
    assert result.ok, result.error
    engine.verify(project, env)


def _plan(workspace: Workspace, env: str, schema: str = "ecommerce") -> promotion.Promotion:
    (p,) = promotion.plan(workspace.project(), env, [schema])
    return p


def _current(workspace: Workspace, env: str, schema: str = "ecommerce") -> str | None:
    (st,) = engine.status(workspace.project(), env, [schema])
    return st.current


def test_first_environment_goes_to_head_and_then_has_nothing_to_do(workspace: Workspace):
    fresh = _plan(workspace, "dev")
    assert (fresh.target, fresh.upgrade_to) == (ECOMMERCE_HEAD, ECOMMERCE_HEAD)
    _bring(workspace, "dev")
    done = _plan(workspace, "dev")
    assert done.upgrade_to is None and "nothing to do" in done.reason


def test_a_later_environment_waits_for_a_verify_before_it(workspace: Workspace):
    project = workspace.project()
    engine.upgrade(project, "dev")  # migrated, never verified
    waiting = _plan(workspace, "staging")
    assert waiting.upgrade_to is None and waiting.target is None
    assert "dev is at 20909ec7166e but it has not been verified there" in waiting.reason
    assert promotion.upgrade(project, "staging")[0].steps == []
    assert _current(workspace, "staging") is None

    engine.verify(project, "dev")
    go = _plan(workspace, "staging")
    assert go.upgrade_to == ECOMMERCE_HEAD
    assert go.reason.startswith(f"staging/ecommerce: dev is at {ECOMMERCE_HEAD}, verified at ")


def test_a_new_file_goes_no_further_than_the_environment_before_verified(workspace: Workspace):
    for env in ("dev", "staging", "prod"):
        _bring(workspace, env)
    workspace.add_revision("ecommerce", NEW_FILE, simple_revision(NEW, ECOMMERCE_HEAD, "wish"))

    # prod alone, staging lagging: prod stays
    prod = _plan(workspace, "prod")
    assert (prod.target, prod.upgrade_to) == (ECOMMERCE_HEAD, None)
    assert promotion.upgrade(workspace.project(), "prod")[0].steps == []
    assert _current(workspace, "prod") == ECOMMERCE_HEAD

    # dev moves on and verifies; staging follows it, prod only once staging verified
    _bring(workspace, "dev")
    result, (eco, ana) = promotion.upgrade(workspace.project(), "staging")
    assert [r.alembic_version for r in result.steps] == [NEW]
    assert eco.reason.startswith(f"staging/ecommerce: dev is at {NEW}, verified at ")
    assert eco.reason.endswith(f"upgrading to {NEW} (head is {NEW})")
    assert ana.upgrade_to is None and ana.target == ANALYTICS_HEAD
    assert _plan(workspace, "prod").upgrade_to is None  # staging not verified at NEW yet
    engine.verify(workspace.project(), "staging")
    assert _plan(workspace, "prod").upgrade_to == NEW


def test_a_failed_verify_before_it_holds_the_environment_where_it_is(workspace: Workspace):
    for env in ("dev", "staging"):
        _bring(workspace, env)
    workspace.add_revision("ecommerce", NEW_FILE, simple_revision(NEW, ECOMMERCE_HEAD, "wish"))
    _bring(workspace, "dev")
    with workspace.connect("dev") as conn:  # drift: a table made by hand
        conn.exec_driver_sql("CREATE TABLE ecommerce.by_hand (id int)")
        conn.commit()
    (failed,) = engine.verify(workspace.project(), "dev", ["ecommerce"])
    assert not failed.ok

    held = _plan(workspace, "staging")
    assert held.upgrade_to is None
    assert held.target == ECOMMERCE_HEAD  # the newest revision dev verified below NEW
    assert f"dev is at {NEW} but its last verify failed" in held.reason
    promotion.upgrade(workspace.project(), "staging")
    assert _current(workspace, "staging") == ECOMMERCE_HEAD


def test_a_revision_file_edited_after_it_was_verified_is_not_promoted(workspace: Workspace):
    for env in ("dev", "staging", "prod"):
        _bring(workspace, env)
    path = workspace.add_revision(
        "ecommerce", NEW_FILE, simple_revision(NEW, ECOMMERCE_HEAD, "wish")
    )
    _bring(workspace, "dev")
    _bring(workspace, "staging")  # NEW applied and verified in staging
    assert _current(workspace, "staging") == NEW
    path.write_text(path.read_text().replace('"wish"', '"wish_edited"'))

    # what prod would apply is not what staging verified: prod goes no further than the
    # newest revision staging verified from unchanged files
    prod = _plan(workspace, "prod")
    assert prod.target == ECOMMERCE_HEAD and prod.upgrade_to is None
    assert f"revision file(s) {NEW} changed since staging applied them" in prod.reason
    promotion.upgrade(workspace.project(), "prod")
    assert _current(workspace, "prod") == ECOMMERCE_HEAD
    assert not {"wish", "wish_edited"} & workspace.tables("ecommerce", "prod")


def test_promotion_never_downgrades_and_a_rollback_voids_older_verifies(workspace: Workspace):
    for env in ("dev", "staging"):
        _bring(workspace, env)
    project = workspace.project()
    engine.downgrade(project, "dev", schemas=["analytics"], to="-1", allow_data_loss=True)

    # dev is back at 54886dd283f2 and has not verified there: its older verify at the head
    # no longer counts, and staging, past what dev has, is never taken down
    staging = _plan(workspace, "staging", "analytics")
    assert staging.upgrade_to is None and staging.target is None
    engine.verify(project, "dev", ["analytics"], expect_head=False)
    staging = _plan(workspace, "staging", "analytics")
    assert staging.target == "54886dd283f2" and staging.upgrade_to is None
    assert staging.past_target and "promotion never downgrades" in staging.reason
    finding = promotion.target_finding(staging)
    assert finding is not None and finding.severity == "warning"

    engine.upgrade(project, "dev", schemas=["analytics"])  # back at head, not verified
    assert _plan(workspace, "staging", "analytics").target == "54886dd283f2"
    assert _current(workspace, "staging", "analytics") == ANALYTICS_HEAD


def test_depends_on_never_carries_another_schema_past_what_was_verified(workspace: Workspace):
    """analytics depends_on an ecommerce revision: when dev's ecommerce failed its verify,
    promoting analytics into staging must not pull ecommerce in (all schemas, or analytics
    alone)."""
    project = workspace.project()
    engine.upgrade(project, "dev")
    with workspace.connect("dev") as conn:
        conn.exec_driver_sql("ALTER TABLE ecommerce.customers DROP COLUMN customer_city")
        conn.commit()
    results = {v.schema: v.ok for v in engine.verify(project, "dev")}
    assert results == {"ecommerce": False, "analytics": True}

    alone = _plan(workspace, "staging", "analytics")
    assert alone.upgrade_to is None and alone.target is None
    assert "needs" in alone.reason and "not verified in the environment before" in alone.reason
    for schemas in (["analytics"], None):
        result, plans = promotion.upgrade(project, "staging", schemas)
        assert result.ok and result.steps == [], [p.reason for p in plans]
    assert workspace.version_heads("staging") == set()
    assert workspace.tables("ecommerce", "staging") == set()

    # once ecommerce verifies in dev, both go
    with workspace.connect("dev") as conn:
        conn.exec_driver_sql("ALTER TABLE ecommerce.customers ADD COLUMN customer_city text")
        conn.commit()
    engine.baseline(project, "dev")
    assert all(v.ok for v in engine.verify(project, "dev"))
    result, _ = promotion.upgrade(project, "staging", ["analytics"])
    assert result.ok
    assert ANALYTICS_HEAD in workspace.version_heads("staging")


def test_a_later_environments_verify_is_one_transaction_whatever_each_schema_expects(
    workspace: Workspace,
):
    """Found by an adversarial session: promotion.verify ran engine.verify twice (schemas
    behind their target, then the others), each committing its rows: an interrupt in the
    second left the first's rows. One call now; the row says what the output says."""
    _bring(workspace, "dev")
    _bring(workspace, "staging")
    project = workspace.project()
    assert engine.downgrade(project, "staging", schemas=["analytics"], to="-1").ok
    before = len(workspace.audit("staging"))
    results = promotion.verify(project, "staging")
    rows = workspace.audit("staging")[before:]
    assert [r.schema_name for r in rows] == ["ecommerce", "analytics"]
    assert len({r.changed_at for r in rows}) == 1  # one transaction
    analytics = next(r for r in results if r.schema == "analytics")
    assert not analytics.ok and analytics.findings[-1].check == "at_target"
    assert rows[1].error == analytics.findings[-1].message and rows[1].success is False

    # interrupted while ecommerce (checked first) runs its hook: nothing recorded at all
    workspace.add_revision(
        "ecommerce",
        NEW_FILE,
        simple_revision(NEW, ECOMMERCE_HEAD, "wish")
        + "\n\ndef verify(connection):\n    raise KeyboardInterrupt\n",
    )
    for env in ("dev", "staging"):
        assert engine.upgrade(workspace.project(), env, to=NEW).ok
    before = len(workspace.audit("staging"))
    try:
        promotion.verify(workspace.project(), "staging")
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the hook's interrupt did not stop verify")
    assert len(workspace.audit("staging")) == before


def test_verify_reports_its_results_before_it_commits_them(workspace: Workspace):
    """What a verify prints is never less than what it recorded: the report sees every
    row written (ids given) and none committed yet."""
    _bring(workspace, "dev")
    seen: list[tuple[list[int | None], int]] = []

    def report(results: list[engine.VerifyResult]) -> None:
        seen.append(([r.audit_id for r in results], len(workspace.audit("dev"))))

    before = len(workspace.audit("dev"))
    results = engine.verify(workspace.project(), "dev", report=report)
    [(ids, visible)] = seen
    assert None not in ids and ids == [r.audit_id for r in results]
    assert visible == before  # not committed while reported
    assert len(workspace.audit("dev")) == before + len(results)
