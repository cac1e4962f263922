"""`migrate lint` (and lint in `migrate plan`): the real squawk binary over each revision's
offline SQL, against a real PostgreSQL for what is pending."""

from __future__ import annotations

import json

import pytest
from conftest import ECOMMERCE_HEAD, Workspace, revision_file

from dagster_alembic import lint
from dagster_alembic.cli import main

pytestmark = pytest.mark.skipif(
    lint.find_squawk() is None, reason="squawk-cli is not installed (pip install -e .)"
)

EXAMPLES = 7  # revisions in migrations/versions

# A revision per hazard, each on top of the example ecommerce head: (id, upgrade, rule, SQL).
INDEX = (
    "aaa000000001",
    '    op.create_index("ix_orders_status", "orders", ["order_status"], schema="ecommerce")',
    "require-concurrent-index-creation",
    "CREATE INDEX ix_orders_status ON ecommerce.orders (order_status)",
)
TYPE_CHANGE = (
    "aaa000000002",
    '    op.alter_column("customers", "customer_city", type_=sa.Text(), schema="ecommerce")',
    "changing-column-type",
    "ALTER TABLE ecommerce.customers ALTER COLUMN customer_city TYPE TEXT",
)
NOT_NULL = (
    "aaa000000003",
    '    op.add_column("orders", sa.Column("channel", sa.Text(), nullable=False), '
    'schema="ecommerce")',
    "adding-required-field",
    "ALTER TABLE ecommerce.orders ADD COLUMN channel TEXT NOT NULL",
)
CLEAN = (
    "aaa000000004",
    '    op.add_column("orders", sa.Column("note", sa.Text(), nullable=True), schema="ecommerce")',
)


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    code, out, _ = run(capsys, *args, "--json")
    return code, json.loads(out)


def add(
    workspace: Workspace,
    revision: str,
    upgrade: str,
    down: str = ECOMMERCE_HEAD,
    header: str = "",
) -> str:
    body = revision_file(revision, down, upgrade)
    if header:
        body = body.replace("depends_on = None\n", f"depends_on = None\n{header}\n")
    workspace.add_revision("ecommerce", f"2024_03_01_0900-{revision}_lint.py", body)
    return revision


def findings(data: dict) -> list[dict]:
    return [{"revision": r["revision"], **f} for r in data["revisions"] for f in r["findings"]]


def edit_toml(workspace: Workspace, old: str, new: str) -> None:
    path = workspace.root / "migrate.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("case", [INDEX, TYPE_CHANGE, NOT_NULL], ids=lambda c: c[2])
def test_each_hazard_trips_its_squawk_rule(workspace: Workspace, capsys, case):
    revision, upgrade, rule, sql = case
    add(workspace, revision, upgrade)

    code, out, err = run(capsys, "lint", "--env", "prod")
    assert code == 1, out + err
    assert f"ecommerce {revision} migrations/versions/ecommerce/2024_03_01_0900-{revision}" in out
    assert f"error    {rule}:" in out
    assert f"statement: {sql}" in out

    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 1 and data["ok"] is False and data["counts"]["error"] >= 1
    # Pending in a fresh database: the examples too, clean; then the new one.
    assert len(data["revisions"]) == EXAMPLES + 1
    found = findings(data)
    assert {f["revision"] for f in found} == {revision}
    assert rule in {f["rule"] for f in found}
    hit = next(f for f in found if f["rule"] == rule)
    assert hit["severity"] == "error" and hit["statement"].startswith(sql)
    entry = next(r for r in data["revisions"] if r["revision"] == revision)
    assert hit["message"] and entry["path"].endswith(f"{revision}_lint.py")
    assert entry["schema"] == "ecommerce"
    assert hit["help"] is None or f"help: {hit['help']}" in out  # squawk has none for some
    # The pipeline sets both timeouts on every step: squawk's timeout rules are not reported.
    assert not {"require-lock-timeout", "require-statement-timeout"} & {f["rule"] for f in found}


def test_a_clean_revision_exits_0(workspace: Workspace, capsys):
    add(workspace, *CLEAN)
    code, out, _ = run(capsys, "lint", "--env", "prod")
    assert code == 0
    assert f"ecommerce {CLEAN[0]} migrations/versions/ecommerce/" in out and ": clean" in out
    assert "prod: 0 error(s), 0 warning(s), 0 ignored in 8 revision(s)" in out
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 0 and data["ok"] is True and findings(data) == []
    assert CLEAN[0] in [r["revision"] for r in data["revisions"]]


def test_with_no_lint_section_findings_are_warnings_and_nothing_is_refused(
    workspace: Workspace, capsys
):
    """An adopted project's migrate.toml has no [lint]: its applied revisions' findings must
    not refuse a fresh environment where they are all pending."""
    path = workspace.root / "migrate.toml"
    text = path.read_text()
    path.write_text(text[: text.index("[lint]")])
    add(workspace, *INDEX[:2])
    code, out, err = run(capsys, "lint", "--env", "prod")
    assert code == 0, out + err
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 0 and data["ok"] is True
    found = findings(data)
    assert {f["severity"] for f in found} == {"warning"}
    assert (INDEX[0], INDEX[2]) in {(f["revision"], f["rule"]) for f in found}
    assert len({f["revision"] for f in found}) > 1  # the applied examples' findings too
    code, out, err = run(capsys, "upgrade", "--env", "dev")
    assert code == 0, out + err
    assert INDEX[0] in workspace.version_heads("dev")


def test_severity_follows_the_environment(workspace: Workspace, capsys):
    """Shipped: every finding is an error from staging on, a warning in dev."""
    add(workspace, *INDEX[:2])
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 1 and [f["severity"] for f in findings(data)] == ["error"]
    code, data = run_json(capsys, "lint", "--env", "dev")
    assert code == 0 and data["ok"] is True
    assert [(f["rule"], f["severity"]) for f in findings(data)] == [(INDEX[2], "warning")]
    code, out, _ = run(capsys, "lint", "--env", "dev")
    assert code == 0 and f"warning  {INDEX[2]}:" in out

    # A rule named for one environment: off in staging, an error in dev (beats dev's default).
    with (workspace.root / "migrate.toml").open("a") as toml:
        toml.write(
            f'\n[lint.environments.staging]\n"{INDEX[2]}" = "off"\n'
            f'\n[lint.environments.prod]\n"{INDEX[2]}" = "warning"\n'
        )
    edit_toml(workspace, 'default = "warning"\n', f'default = "warning"\n"{INDEX[2]}" = "error"\n')
    code, data = run_json(capsys, "lint", "--env", "staging")
    assert code == 0 and findings(data) == []
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 0 and [f["severity"] for f in findings(data)] == ["warning"]
    code, data = run_json(capsys, "lint", "--env", "dev")
    assert code == 1 and [f["severity"] for f in findings(data)] == ["error"]


def test_a_revision_silences_a_rule_with_a_reason(workspace: Workspace, capsys):
    reason = "orders has 10 rows in every environment"
    add(
        workspace,
        *INDEX[:2],
        header=f'squawk_ignore = {{"{INDEX[2]}": "{reason}"}}',
    )
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 0 and data["ok"] is True
    [hit] = findings(data)
    assert hit["rule"] == INDEX[2] and hit["severity"] == "ignored" and hit["reason"] == reason
    assert data["counts"] == {"error": 0, "warning": 0, "ignored": 1}
    code, out, _ = run(capsys, "lint", "--env", "prod")
    assert code == 0 and f"ignored  {INDEX[2]}: {reason}" in out

    # Silencing one rule leaves the others: the type change still fails.
    add(
        workspace,
        TYPE_CHANGE[0],
        TYPE_CHANGE[1],
        down=INDEX[0],
        header=f'squawk_ignore = {{"{INDEX[2]}": "not this one"}}',
    )
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 1
    assert {(f["revision"], f["severity"]) for f in findings(data)} == {
        (INDEX[0], "ignored"),
        (TYPE_CHANGE[0], "error"),
    }
    # ... and that silence, which its revision does not need, is pointed out.
    assert data["warnings"] == [
        f"2024_03_01_0900-{TYPE_CHANGE[0]}_lint.py: squawk_ignore silences {INDEX[2]}, "
        "which this revision does not trip: remove it"
    ]
    code, _, err = run(capsys, "lint", "--env", "prod")
    assert code == 1 and f"migrate: warning: 2024_03_01_0900-{TYPE_CHANGE[0]}" in err


@pytest.mark.parametrize(
    "header, why",
    [
        ('squawk_ignore = {"require-concurrent-index-creation": ""}', "must be a literal dict"),
        ('squawk_ignore = {"require-concurent-index-creation": "typo"}', "has no rule"),
    ],
)
def test_a_bad_ignore_is_one_line_exit_2(workspace: Workspace, capsys, header, why):
    add(workspace, *INDEX[:2], header=header)
    code, out, err = run(capsys, "lint", "--env", "prod")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and why in err and INDEX[0] in err


def test_pending_only_unless_all(workspace: Workspace, capsys):
    add(workspace, *INDEX[:2])
    code, out, err = run(capsys, "upgrade", "--env", "dev")
    assert code == 0, out + err  # applies the index revision in dev
    add(workspace, TYPE_CHANGE[0], TYPE_CHANGE[1], down=INDEX[0])

    code, data = run_json(capsys, "lint", "--env", "dev")
    assert [r["revision"] for r in data["revisions"]] == [TYPE_CHANGE[0]]
    assert {f["rule"] for f in findings(data)} == {TYPE_CHANGE[2]}

    code, data = run_json(capsys, "lint", "--env", "dev", "--all")
    assert data["all"] is True and len(data["revisions"]) == EXAMPLES + 2
    assert {(f["revision"], f["rule"]) for f in findings(data)} == {
        (INDEX[0], INDEX[2]),
        (TYPE_CHANGE[0], TYPE_CHANGE[2]),
    }
    # Nothing pending in prod's fresh database but the whole history; --schema narrows.
    code, data = run_json(capsys, "lint", "--env", "prod", "--schema", "analytics")
    assert code == 0 and {r["schema"] for r in data["revisions"]} == {"analytics"}

    code, out, err = run(capsys, "upgrade", "--env", "dev")
    assert code == 0, out + err
    code, out, _ = run(capsys, "lint", "--env", "dev")
    assert code == 0 and "dev: nothing pending to lint" in out


def test_the_shipped_examples_lint_clean(workspace: Workspace, capsys):
    for env in ("dev", "staging", "prod"):
        code, data = run_json(capsys, "lint", "--env", env, "--all")
        assert code == 0 and data["counts"] == {"error": 0, "warning": 0, "ignored": 0}, env
        assert len(data["revisions"]) == EXAMPLES
    code, out, _ = run(capsys, "lint", "--env", "prod")  # pending: all 7 in a fresh database
    assert code == 0 and out.count(": clean") == EXAMPLES


def test_the_shipped_configuration_is_what_keeps_them_clean(workspace: Workspace, capsys):
    """The rules migrate.toml turns off do fire on the examples (the configuration, not the
    revision files, makes them clean), and never on Alembic's own statements: its version
    table is VARCHAR(32) and its BEGIN/COMMIT wrap an autocommit block."""
    edit_toml(workspace, 'prefer-text-field = "off"', 'prefer-text-field = "error"')
    code, data = run_json(capsys, "lint", "--env", "prod", "--all")
    assert code == 1
    hits = findings(data)
    assert {f["rule"] for f in hits} == {"prefer-text-field"}
    assert "7afdd87a5e29" not in {f["revision"] for f in hits}  # its only table: alembic_version
    assert all("alembic_version" not in f["statement"] for f in hits)
    assert any(f["statement"].startswith("CREATE TABLE ecommerce.customers") for f in hits)


def test_alembic_transactions_are_linted_not_reported(workspace: Workspace, capsys):
    """An index built CONCURRENTLY inside the revision's transaction fails at run time:
    squawk sees Alembic's BEGIN and says so; inside an autocommit block it is clean."""
    add(
        workspace,
        "aaa000000005",
        '    op.create_index("ix_a", "orders", ["order_status"], schema="ecommerce", '
        "postgresql_concurrently=True, if_not_exists=True)",
    )
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 1
    assert {f["rule"] for f in findings(data)} == {"ban-concurrent-index-creation-in-transaction"}
    edit = workspace.versions / "ecommerce" / "2024_03_01_0900-aaa000000005_lint.py"
    edit.write_text(
        edit.read_text().replace(
            "    op.create_index(",
            "    with op.get_context().autocommit_block():\n        op.create_index(",
        )
    )
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 0 and findings(data) == []


def test_timeout_rules_are_reported_where_the_pipeline_sets_no_timeout(
    workspace: Workspace, capsys
):
    add(workspace, *INDEX[:2])
    edit_toml(workspace, 'lock_timeout = "3s"', 'lock_timeout = "0"')  # prod's
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 1
    rules = {f["rule"] for f in findings(data)}
    assert "require-lock-timeout" in rules and "require-statement-timeout" not in rules


def test_plan_shows_findings_as_sql_comments(workspace: Workspace, capsys):
    add(workspace, *INDEX[:2])
    code, out, _ = run(capsys, "plan", "--env", "prod", "--schema", "ecommerce")
    assert code == 0
    section = out[out.index("-- lint ecommerce") :].strip().splitlines()
    assert section[0].startswith("-- lint ecommerce (squawk ") and "1 error(s)" in section[0]
    assert section[1].startswith(f"--   error   {INDEX[0]} {INDEX[2]}: CREATE INDEX")
    assert all(line.startswith("--") for line in section)
    code, data = run_json(capsys, "plan", "--env", "prod", "--schema", "ecommerce")
    [schema] = data["schemas"]
    assert [(f["revision"], f["rule"]) for f in schema["lint"]] == [(INDEX[0], INDEX[2])]


def test_without_squawk_lint_is_one_line_exit_2_and_plan_goes_on(
    workspace: Workspace, capsys, monkeypatch
):
    monkeypatch.setattr(lint, "find_squawk", lambda: None)
    code, out, err = run(capsys, "lint", "--env", "prod")
    assert code == 2 and out == ""
    assert (
        err == f"migrate: error: squawk is not installed: pip install {lint.SQUAWK_PACKAGE} "
        "(lint runs the squawk binary that package carries)\n"
    )
    code, out, _ = run(capsys, "plan", "--env", "prod", "--schema", "ecommerce")
    assert code == 0 and "CREATE TABLE ecommerce.customers" in out
    assert out.count("-- lint: squawk is not installed") == 1


@pytest.mark.parametrize(
    "old, new, why",
    [
        ('default = "error"', 'default = "fatal"', '[lint] default: must be "error"'),
        ('prefer-text-field = "off"', 'prefer-text-feld = "off"', "has no rule 'prefer-text-feld'"),
        ("[lint.environments.dev]", "[lint.environments.qa]", "no environment 'qa'"),
    ],
)
def test_bad_lint_configuration_is_one_line_exit_2(workspace: Workspace, capsys, old, new, why):
    edit_toml(workspace, old, new)
    code, out, err = run(capsys, "lint", "--env", "prod", "--all")
    assert code == 2 and out == "" and err.count("\n") == 1 and why in err, err


# --- the gate: promotion refused before any SQL runs ---------------------------------------


def untouched(workspace: Workspace, env: str) -> bool:
    """Nothing of the pipeline's in that database: no version table, no audit table, no
    schema of the project (the refusal came before any SQL, and wrote no audit row)."""
    found = workspace.scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        env,
    )
    return found == 0


def promote_dev(workspace: Workspace, capsys: pytest.CaptureFixture) -> None:
    """dev at head and verified: what staging's promotion carries."""
    code, out, err = run(capsys, "upgrade", "--env", "dev")
    assert code == 0, out + err
    code, out, err = run(capsys, "verify", "--env", "dev")
    assert code == 0, out + err


@pytest.mark.parametrize("case", [INDEX, TYPE_CHANGE, NOT_NULL], ids=lambda c: c[2])
def test_promotion_is_refused_with_the_finding_first(workspace: Workspace, capsys, case):
    revision, upgrade, rule, sql = case
    add(workspace, revision, upgrade)
    promote_dev(workspace, capsys)  # dev's rules make it a warning: applied there
    assert revision in workspace.version_heads("dev")

    for args in (("upgrade", "--env", "staging"), ("upgrade", "--env", "staging", "--json")):
        code, out, err = run(capsys, *args)
        assert code == 1 and out == "", out + err
        first = err.splitlines()[0]
        assert first.startswith(
            f"migrate: failed: ecommerce {revision} (2024_03_01_0900-{revision}_lint.py): {rule}: "
        ), err
        assert f"(statement: {sql}" in first
        assert err.splitlines()[-1].startswith(
            "staging: upgrade refused by lint before any SQL ran: 1 finding(s)"
        )
        assert untouched(workspace, "staging")

    # --to names the revision: the same gate (engine.upgrade); the example before it passes.
    code, _, err = run(capsys, "upgrade", "--env", "staging", "--to", revision)
    assert code == 1 and err.startswith(f"migrate: failed: ecommerce {revision} ")
    assert untouched(workspace, "staging")
    code, _, err = run(capsys, "upgrade", "--env", "staging", "--to", ECOMMERCE_HEAD)
    assert code == 0, err
    assert workspace.version_heads("staging") == {ECOMMERCE_HEAD}
    assert revision not in {r.alembic_version for r in workspace.audit("staging")}


def test_a_clean_revision_is_promoted(workspace: Workspace, capsys):
    add(workspace, *CLEAN)
    promote_dev(workspace, capsys)
    code, out, err = run(capsys, "upgrade", "--env", "staging")
    assert code == 0, out + err
    assert CLEAN[0] in workspace.version_heads("staging")
    assert "note" in {c["name"] for c in sa_columns(workspace, "orders", "staging")}


def sa_columns(workspace: Workspace, table: str, env: str) -> list[dict]:
    import sqlalchemy as sa

    with workspace.connect(env) as conn:
        return sa.inspect(conn).get_columns(table, schema="ecommerce")


def test_the_first_environment_is_gated_when_its_rules_say_error(workspace: Workspace, capsys):
    """Whatever `migrate lint --env E` exits 1 for, `migrate upgrade --env E` refuses: dev
    too, once its rules make a finding an error (shipped: only warnings in dev)."""
    add(workspace, *INDEX[:2])
    edit_toml(workspace, 'default = "warning"\n', f'default = "warning"\n"{INDEX[2]}" = "error"\n')
    assert run(capsys, "lint", "--env", "dev")[0] == 1
    code, out, err = run(capsys, "upgrade", "--env", "dev")
    assert code == 1 and out == ""
    assert err.startswith(f"migrate: failed: ecommerce {INDEX[0]} (") and INDEX[2] in err
    assert untouched(workspace, "dev")
    # Only what the upgrade applies is linted: the examples before it go through.
    code, _, err = run(capsys, "upgrade", "--env", "dev", "--to", ECOMMERCE_HEAD)
    assert code == 0, err


def test_the_reason_of_a_silenced_rule_is_kept_in_the_audit_row(workspace: Workspace, capsys):
    reason = "orders has 10 rows in every environment"
    add(workspace, *INDEX[:2], header=f'squawk_ignore = {{"{INDEX[2]}": "{reason}"}}')
    promote_dev(workspace, capsys)
    code, out, err = run(capsys, "upgrade", "--env", "staging")  # silenced: not refused
    assert code == 0, out + err
    for env in ("dev", "staging"):
        rows = workspace.audit(env)
        mine = [r for r in rows if r.alembic_version == INDEX[0] and r.operation == "migration"]
        assert [r.squawk_ignore for r in mine] == [{INDEX[2]: reason}], env
        assert all(r.squawk_ignore is None for r in rows if r not in mine)
    # ... and read back through the engine (and `migrate audit --json`).
    code, data = run_json(capsys, "audit", "--env", "staging")
    assert code == 0
    [row] = [r for r in data["rows"] if r["alembic_version"] == INDEX[0]]
    assert row["squawk_ignore"] == {INDEX[2]: reason}


# Release 1's alembic_version_history (layout 1, before the squawk_ignore column), as it
# created the table.
LAYOUT_1 = """
CREATE TABLE public.alembic_version_history (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    alembic_version VARCHAR(255), prev_alembic_version VARCHAR(255),
    operation VARCHAR(16) NOT NULL, operation_direction VARCHAR(16),
    user_version VARCHAR(255), changed_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    schema_name VARCHAR(63), environment VARCHAR(63), revision_checksum VARCHAR(64),
    executed_by VARCHAR(255), run_id VARCHAR(64), duration_ms FLOAT,
    success BOOLEAN NOT NULL, error TEXT);
CREATE INDEX ix_alembic_version_history_schema_version
    ON public.alembic_version_history (schema_name, alembic_version);
COMMENT ON TABLE public.alembic_version_history IS 'migrate layout 1 own';
INSERT INTO public.alembic_version_history (operation, schema_name, environment, success)
    VALUES ('verify', 'ecommerce', 'dev', true);
"""


def _make_audit_alembic_table(workspace: Workspace) -> None:
    """Audit-Alembic 0.2's own table (its Auditor's definition), with a row it wrote."""
    import audit_alembic

    with workspace.connect() as conn:
        audit_alembic.Auditor.create("app-1").table.create(conn)
        conn.exec_driver_sql(
            "INSERT INTO alembic_version_history (alembic_version, prev_alembic_version, "
            "operation_type, operation_direction, user_version, changed_at) "
            "VALUES ('0001', '', 'migration', 'up', 'app-1', now() AT TIME ZONE 'UTC')"
        )
        conn.commit()


def _column_type(workspace: Workspace, column: str) -> object:
    return workspace.scalar(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'alembic_version_history' AND column_name = :c",
        c=column,
    )


@pytest.mark.parametrize("older", ["layout-1", "audit-alembic"])
def test_an_older_audit_table_gets_the_column_in_place(workspace: Workspace, capsys, older):
    if older == "layout-1":
        with workspace.connect() as conn:
            conn.exec_driver_sql(LAYOUT_1)
            conn.commit()
    else:
        _make_audit_alembic_table(workspace)
    before = [r._asdict() for r in workspace.audit()]
    assert len(before) == 1 and _column_type(workspace, "squawk_ignore") is None
    # Read before any upgrade (migrate audit changes nothing): the column reads as null.
    code, data = run_json(capsys, "audit", "--env", "dev")
    assert code == 0 and [r["squawk_ignore"] for r in data["rows"]] == [None]
    assert _column_type(workspace, "squawk_ignore") is None

    reason = "orders is tiny"
    add(workspace, *INDEX[:2], header=f'squawk_ignore = {{"{INDEX[2]}": "{reason}"}}')
    code, out, err = run(capsys, "upgrade", "--env", "dev")
    assert code == 0, out + err

    assert _column_type(workspace, "squawk_ignore") == "jsonb"
    rows = workspace.audit()
    # Its rows untouched; the columns added (squawk_ignore, and ours next to
    # Audit-Alembic's) null in them.
    old, now = before[0], rows[0]._asdict()
    assert {k: v for k, v in now.items() if k in old} == old
    assert "squawk_ignore" in set(now) - set(old)
    assert all(v is None for k, v in now.items() if k not in old)
    [mine] = [r for r in rows if r.alembic_version == INDEX[0]]
    assert mine.squawk_ignore == {INDEX[2]: reason}
    assert sum(r.squawk_ignore is not None for r in rows) == 1
    expected = "migrate layout 1 own" if older == "layout-1" else "migrate layout 1 audit-alembic"
    assert (
        workspace.scalar(
            "SELECT obj_description('public.alembic_version_history'::regclass, 'pg_class')"
        )
        == expected
    )
    if older == "audit-alembic":  # its own columns filled in its conventions, too
        assert (
            workspace.scalar(
                "SELECT operation_direction FROM alembic_version_history "
                "WHERE alembic_version = :v",
                v=INDEX[0],
            )
            == "up"
        )


# --- Dagster: metadata, the lint check, refused promotion ------------------------------------


def _key(env: str, schema: str = "ecommerce"):
    import dagster as dg

    return dg.AssetKey([env, schema])


def _failures(result) -> list[str]:
    """The description of each failed step (the dg.Failure a refusal becomes)."""
    return [
        e.step_failure_data.user_failure_data.description
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE" and e.step_failure_data.user_failure_data
    ]


def _run_checks(defs, instance, *keys):
    """Execute only these checks, as the UI's "Execute checks" does: a job selecting them."""
    import dagster as dg

    job = dg.define_asset_job("run_checks", selection=dg.AssetSelection.checks(*keys))
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    result = merged.resolve_job_def("run_checks").execute_in_process(instance=instance)
    assert result.success
    return {e.asset_key: e for e in result.get_asset_check_evaluations()}


@pytest.mark.parametrize("case", [INDEX, TYPE_CHANGE, NOT_NULL], ids=lambda c: c[2])
def test_dagster_shows_findings_and_refuses_promotion_before_any_sql(workspace: Workspace, case):
    import dagster as dg

    from dagster_alembic.definitions import build_definitions

    revision, upgrade, rule, sql = case
    add(workspace, revision, upgrade)
    defs = build_definitions(str(workspace.ini))
    graph = defs.resolve_asset_graph()
    specs = {c: graph.get_check_spec(c) for c in graph.asset_check_keys}
    # the lint check sits next to verify: verify stays the blocking gate, lint does not block
    keys = graph.get_all_asset_keys()
    for name, blocking in (("lint", False), ("verify", True)):
        mine = {c.asset_key: s.blocking for c, s in specs.items() if c.name == name}
        assert mine == dict.fromkeys(keys, blocking), name
    assets = defs.resolve_implicit_global_asset_job_def()

    with dg.instance_for_test() as instance:
        # The lint check ahead of any run: what prod has pending, under prod's rules.
        lint_prod = dg.AssetCheckKey(_key("prod"), "lint")
        lint_dev = dg.AssetCheckKey(_key("dev"), "lint")
        found = _run_checks(defs, instance, lint_prod, lint_dev)
        prod, dev = found[_key("prod")], found[_key("dev")]
        assert not prod.passed and prod.severity == dg.AssetCheckSeverity.ERROR
        assert prod.description.startswith(f"ecommerce {revision} (2024_03_01_0900-{revision}")
        assert f": {rule}: " in prod.description.splitlines()[0]
        assert prod.metadata["lint_errors"].value >= 1
        assert not dev.passed and dev.severity == dg.AssetCheckSeverity.WARN  # dev: warnings
        assert dev.metadata["lint_errors"].value == 0
        assert untouched(workspace, "prod") and untouched(workspace, "dev")

        # dev: applied (a warning there), the finding in the materialization's metadata.
        done = assets.execute_in_process(instance=instance, asset_selection=[_key("dev")])
        assert done.success and revision in workspace.version_heads("dev")
        meta = instance.get_latest_materialization_event(_key("dev")).asset_materialization.metadata
        hits = [r.data for r in meta["lint_findings"].value.records]
        assert (revision, "warning", rule) in {
            (h["revision"], h["severity"], h["rule"]) for h in hits
        }
        assert {h["revision"] for h in hits} == {revision}
        assert meta["lint_warnings"].value >= 1 and meta["lint_errors"].value == 0
        assert revision in meta["lint_revisions"].value.split(", ")
        # dev has nothing pending any more: its lint check passes.
        assert _run_checks(defs, instance, lint_dev)[_key("dev")].passed

        # staging's asset: refused before any SQL, the finding first.
        refused = assets.execute_in_process(
            instance=instance, asset_selection=[_key("staging")], raise_on_error=False
        )
        assert not refused.success
        [failure] = _failures(refused)
        first = failure.splitlines()[0]
        assert first.startswith(f"ecommerce {revision} (") and f": {rule}: " in first, failure
        assert f"(statement: {sql}" in first
        assert not refused.get_asset_materialization_events()
        assert untouched(workspace, "staging")

        # the migrate job, to head (promotion) and to the revision itself (explicit target)
        for to in ("head", revision):
            config = {"ops": {"upgrade": {"config": {"environment": "staging", "to": to}}}}
            job = defs.resolve_job_def("migrate").execute_in_process(
                run_config=config, instance=instance, raise_on_error=False
            )
            assert not job.success
            [failure] = _failures(job)
            assert failure.startswith(f"ecommerce {revision} (") and rule in failure, failure
            assert untouched(workspace, "staging")


def test_dagster_promotes_a_clean_revision_and_its_lint_check_passes(workspace: Workspace):
    import dagster as dg

    from dagster_alembic.definitions import build_definitions

    add(workspace, *CLEAN)
    defs = build_definitions(str(workspace.ini))
    with dg.instance_for_test() as instance:
        check = _run_checks(defs, instance, dg.AssetCheckKey(_key("staging"), "lint"))
        evaluation = check[_key("staging")]
        assert evaluation.passed and evaluation.metadata["lint_errors"].value == 0
        assert CLEAN[0] in evaluation.metadata["lint_revisions"].value
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[_key("dev"), _key("staging")]
        )
        assert result.success
        assert CLEAN[0] in workspace.version_heads("staging")
        meta = instance.get_latest_materialization_event(
            _key("staging")
        ).asset_materialization.metadata
        assert meta["lint_findings"].value.records == []
        assert CLEAN[0] in meta["lint_revisions"].value


READS_ROWS = (
    "aaa000000006",
    '    count = op.get_bind().execute(sa.text("SELECT count(*) FROM ecommerce.orders"))'
    ".scalar()\n"
    "    op.execute(f\"COMMENT ON TABLE ecommerce.orders IS '{count} orders'\")",
)


def test_a_revision_that_cannot_render_offline_is_a_finding_it_can_silence(
    workspace: Workspace, capsys
):
    """A data migration that reads rows has no offline SQL for squawk: lint says so as
    offline-render, at the environment's level; a reviewed revision names it in squawk_ignore."""
    add(workspace, *READS_ROWS)
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 1
    [hit] = findings(data)
    assert (hit["revision"], hit["rule"], hit["severity"]) == (
        READS_ROWS[0],
        "offline-render",
        "error",
    )
    assert hit["message"].startswith(f"cannot render the SQL of revision {READS_ROWS[0]}")
    code, data = run_json(capsys, "lint", "--env", "dev")
    assert code == 0 and [f["severity"] for f in findings(data)] == ["warning"]

    promote_dev(workspace, capsys)  # applied in dev (a warning there): it reads 0 orders
    code, _, err = run(capsys, "upgrade", "--env", "staging")
    assert code == 1 and err.startswith(f"migrate: failed: ecommerce {READS_ROWS[0]} (")
    assert ": offline-render: cannot render" in err.splitlines()[0]
    assert untouched(workspace, "staging")

    path = workspace.versions / "ecommerce" / f"2024_03_01_0900-{READS_ROWS[0]}_lint.py"
    path.write_text(
        path.read_text().replace(
            "depends_on = None\n",
            'depends_on = None\nsquawk_ignore = {"offline-render": "reviewed: one COMMENT"}\n',
        )
    )
    code, data = run_json(capsys, "lint", "--env", "prod")
    assert code == 0 and [f["severity"] for f in findings(data)] == ["ignored"]


def test_the_gate_lints_the_same_files_under_the_same_rules_once(workspace: Workspace, monkeypatch):
    """A fleet upgrades many databases with the same pending files: squawk runs once."""
    from dagster_alembic import engine

    calls: list[list[str]] = []
    squawk = lint._squawk

    def counted(binary, args, cwd):
        calls.append(list(args))
        return squawk(binary, args, cwd)

    monkeypatch.setattr(lint, "_squawk", counted)
    project = workspace.project()
    heads = [project.head(s) for s in project.schemas]
    engine.lint_gate(project, "staging", heads)
    first = len(calls)
    assert first >= 1
    engine.lint_gate(project, "staging", heads, database=workspace.urls["prod"].database)
    assert len(calls) == first
    engine.lint_gate(project, "dev", heads)  # dev's rules cannot refuse: not linted at all
    assert len(calls) == first
    edit_toml(workspace, 'prefer-text-field = "off"', 'prefer-text-field = "error"')
    with pytest.raises(lint.LintRefused) as refused:
        engine.lint_gate(workspace.project(), "staging", heads)  # new rules: linted again
    assert len(calls) > first
    assert ": prefer-text-field: " in str(refused.value).splitlines()[0]
