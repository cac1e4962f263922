"""lazyscript.py: Alembic's upgrade with a revision map read from the files' text.

The same map, the same steps, the same audit rows and database as command.upgrade; only
the modules of the revisions that run are imported. Alembic's private parts it relies on
are pinned here first: a new Alembic that changes them fails these tests, not a deploy.
"""

from __future__ import annotations

import ast
import inspect
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic import util as alembic_util
from alembic.script import ScriptDirectory
from conftest import ANALYTICS_HEAD, ECOMMERCE_HEAD, Workspace, simple_revision

from dagster_alembic import engine, lazyscript, scan
from dagster_alembic.revisions import MigrationProject


def _config(project: MigrationProject):
    return engine.offline_config(project, "dev", io.StringIO())


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The file names Alembic's loader imports (env.py and revision modules), in order."""
    loaded: list[str] = []
    real = alembic_util.load_python_file

    def spy(dir_, filename):
        loaded.append(Path(filename).name)
        return real(dir_, filename)

    monkeypatch.setattr(alembic_util, "load_python_file", spy)
    yield loaded


# --- Alembic's private parts, pinned ------------------------------------------------------


def test_command_upgrade_still_asks_upgrade_revs_inside_environment_context():
    source = inspect.getsource(command.upgrade)
    assert "script._upgrade_revs(revision, rev)" in source
    assert "EnvironmentContext(" in source and "script.run_env()" in source
    for keyword in ("fn=upgrade", "destination_rev=revision", "starting_rev=starting_rev"):
        assert keyword in source, keyword


def test_alembic_loads_revisions_from_version_locations_with_load_python_file(workspace):
    from alembic.script import base

    source = inspect.getsource(ScriptDirectory._load_revisions)
    assert "self._version_locations" in source and "Script._from_path" in source
    assert "recursive_version_locations" in inspect.getsource(base.Script._list_py_dir)
    assert "util.load_python_file(dir_, filename)" in inspect.getsource(base.Script._from_path)
    assert base._only_source_rev_file.pattern == lazyscript._SOURCE_FILE.pattern
    project = workspace.project()
    script = ScriptDirectory.from_config(_config(project))
    assert [Path(p) for p in script._version_locations] == [
        h.folder for h in project.settings.histories
    ]


# --- the same map and steps ---------------------------------------------------------------


def _shape(script: ScriptDirectory) -> list[tuple]:
    return [
        (r.revision, r.down_revision, r.dependencies, r._orig_branch_labels)
        for r in script.revision_map._generator()
    ]


def test_same_revision_map_and_steps_as_alembic_without_importing(workspace, imports):
    project = workspace.project()
    lazy = lazyscript.script_directory(_config(project), project)
    assert lazy is not None
    plain = ScriptDirectory.from_config(_config(project))
    # The same Revisions in the same order (Alembic's generator imports every module).
    assert _shape(lazy) == _shape(plain)
    assert [Path(s.path).name for s in plain.revision_map._generator()] == [
        Path(s.path).name for s in lazy.revision_map._generator()
    ]
    imports.clear()
    first_ecommerce = project.revisions("ecommerce")[0].revision
    for target, current in [
        ("heads", ()),
        ("ecommerce@head", ()),
        (ANALYTICS_HEAD, ()),
        ("heads", (first_ecommerce,)),
        ("heads", (ECOMMERCE_HEAD,)),
        (ECOMMERCE_HEAD, (first_ecommerce,)),
    ]:
        lazy = lazyscript.script_directory(_config(project), project)
        assert lazy is not None
        imports.clear()
        planned = lazy._upgrade_revs(target, current)
        ours = [(s.revision.revision, s.is_upgrade) for s in planned]
        # Only the modules of the steps planned (a step holds its upgrade()).
        assert sorted(imports) == sorted(Path(s.revision.path).name for s in planned)
        theirs = [(s.revision.revision, s.is_upgrade) for s in plain._upgrade_revs(target, current)]
        assert ours == theirs, target
    lazy = lazyscript.script_directory(_config(project), project)
    imports.clear()
    assert lazy is not None and lazy._upgrade_revs("heads", (ECOMMERCE_HEAD, ANALYTICS_HEAD)) == []
    assert imports == []  # nothing pending: nothing imported


@pytest.mark.parametrize(
    ("source", "literal"),
    [
        ('revision = "a"\ndown_revision = None\n', True),
        ('revision: str = "a"\ndown_revision: str | None = "b"\nbranch_labels = ("x",)\n', True),
        ('revision = "a"\ndown_revision = ["b", "c"]\ndepends_on = "d"\n', True),
        ('revision = "a"\n', False),  # no down_revision: Alembic fails on the import
        ('revision = "a"\ndown_revision = "b" + "c"\n', False),
        ('revision = "a"\ndown_revision = None\nif X:\n    down_revision = "b"\n', False),
        ('revision = "a"\ndown_revision = None\nfrom m import *\n', False),
        ('revision = "a"\ndown_revision = None\nfrom m import depends_on\n', False),
        ('revision = down_revision = "a"\n', False),
        ('revision = "a"\ndown_revision = None\ndef __getattr__(n):\n    return "b"\n', False),
        ('revision = "a"\ndown_revision = None\ndef f():\n    global depends_on\n', False),
        ('revision = "a"\ndown_revision = (1,)\n', False),
    ],
)
def test_literal_ids_only_when_the_import_can_give_nothing_else(source, literal):
    assert scan._literal_ids(ast.parse(source)) is literal


def test_falls_back_where_the_text_cannot_stand_in(workspace):
    project = workspace.project()
    helper = workspace.versions / "ecommerce" / "_helpers.py"
    helper.write_text("X = 1\n")  # the scan skips it; Alembic would import it
    assert lazyscript.script_directory(_config(project), project) is None
    helper.unlink()
    workspace.add_revision(
        "ecommerce",
        "2024_09_01_0900-new000000001_x.py",
        # Computed: the text cannot say what the import gives.
        simple_revision("new000000001", ECOMMERCE_HEAD, "t1").replace(
            "branch_labels = None", "branch_labels = tuple()"
        ),
    )
    project = workspace.project()
    assert project.revision("new000000001") is not None
    assert lazyscript.script_directory(_config(project), project) is None


# --- the same run -------------------------------------------------------------------------


def _run(
    workspace: Workspace,
    env: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    lazy: bool,
    check_lint: bool = True,
) -> engine.RunResult:
    with monkeypatch.context() as patch:
        if not lazy:
            patch.setattr(lazyscript, "script_directory", lambda config, project: None)
        return engine.upgrade(workspace.project(), env, check_lint=check_lint)


def _rows(workspace: Workspace, env: str) -> list[tuple]:
    return [
        (
            r.operation,
            r.operation_direction,
            r.alembic_version,
            r.prev_alembic_version,
            r.schema_name,
            r.revision_checksum,
            r.success,
            r.error,
        )
        for r in workspace.audit(env)
    ]


def test_same_steps_rows_and_schema_as_command_upgrade(workspace, monkeypatch, imports):
    # dev lazily, staging through command.upgrade: from base, then one pending revision.
    ecommerce_first = workspace.project().revisions("ecommerce")[1].revision
    for env in ("dev", "staging"):
        engine.upgrade(workspace.project(), env, to=ecommerce_first)
    imports.clear()
    lazy = _run(workspace, "dev", monkeypatch, lazy=True)
    lazy_imports, imports[:] = list(imports), []
    plain = _run(workspace, "staging", monkeypatch, lazy=False)
    assert lazy.ok and plain.ok
    assert [r.alembic_version for r in lazy.steps] == [r.alembic_version for r in plain.steps]
    assert _rows(workspace, "dev") == _rows(workspace, "staging")
    assert workspace.version_heads("dev") == workspace.version_heads("staging")
    for schema in ("ecommerce", "analytics"):
        assert workspace.tables(schema, "dev") == workspace.tables(schema, "staging")
    project = workspace.project()
    names = {project.resolve(str(r.alembic_version)).path.name for r in lazy.steps}
    assert names and sorted(lazy_imports) == sorted({"env.py", *names})  # only what ran
    every = {Path(f.path).name for f in project.files}
    assert set(imports) == {"env.py", *every}  # command.upgrade: every module

    workspace.add_revision(
        "ecommerce",
        "2024_09_01_0900-new000000001_x.py",
        simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
    )
    imports.clear()
    assert _run(workspace, "dev", monkeypatch, lazy=True).ok
    assert imports == ["env.py", "2024_09_01_0900-new000000001_x.py"]
    assert _run(workspace, "staging", monkeypatch, lazy=False).ok
    assert _rows(workspace, "dev") == _rows(workspace, "staging")
    # verify agrees: checksums recorded, no drift between the catalog and its reference
    for env in ("dev", "staging"):
        assert all(r.ok for r in engine.verify(workspace.project(), env)), env


def test_a_pending_module_that_fails_to_import_fails_as_with_command_upgrade(
    workspace, monkeypatch
):
    for env in ("dev", "staging"):
        engine.upgrade(workspace.project(), env)
    workspace.add_revision(
        "ecommerce",
        "2024_09_01_0900-new000000001_x.py",
        "import no_such_module_here\n" + simple_revision("new000000001", ECOMMERCE_HEAD, "t1"),
    )
    before = len(workspace.audit("dev")), len(workspace.audit("staging"))
    # (the lint gate, which renders the file offline, would refuse it first in staging)
    lazy = _run(workspace, "dev", monkeypatch, lazy=True, check_lint=False)
    plain = _run(workspace, "staging", monkeypatch, lazy=False, check_lint=False)
    assert not lazy.ok and lazy.error == plain.error and "no_such_module_here" in str(lazy.error)
    assert lazy.steps == plain.steps == []  # failed before any step, as Alembic's import
    assert (len(workspace.audit("dev")), len(workspace.audit("staging"))) == before
    assert "new000000001" not in workspace.version_heads("dev")


def test_lint_renders_a_revision_offline_importing_only_its_module(workspace, imports, monkeypatch):
    """The lint gate renders each pending revision's offline SQL: with the readings standing
    in for Alembic's map, only that revision's module is imported, and the SQL is the one
    command.upgrade(sql=True) renders."""
    from dagster_alembic import lint

    project = workspace.project()
    revision = project.revisions("ecommerce")[2]
    lazy = lint.render(project, "dev", revision)
    assert imports == ["env.py", revision.path.name]
    assert any("CREATE TABLE" in piece.text for piece in lazy)

    imports.clear()
    monkeypatch.setattr(lint.lazyscript, "script_directory", lambda config, project: None)
    plain = lint.render(project, "dev", revision)  # Alembic's own command
    assert set(imports) == {"env.py", *(Path(f.path).name for f in project.files)}
    assert [p.text for p in lazy] == [p.text for p in plain]
