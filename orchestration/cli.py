"""`migrate`: the migration engine for operators and CI, without a Dagster instance.

Exit codes: 0 success, 1 a migration or verify failed, 2 bad usage or configuration
(nothing was changed).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import re
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from dagster_alembic import fastpath
from dagster_alembic.errors import ConfigurationError, MigrationError
from dagster_alembic.revisions import MigrationProject
from dagster_alembic.settings import ProjectSettings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from dagster_alembic import audit, embedded, engine, promotion, targets, urls


def _import_engine() -> None:
    """The engine (Alembic, SQLAlchemy), imported once the fast path has not answered:
    `migrate status`, a no-op upgrade and verify answer without it (fastpath.py)."""
    global audit, embedded, engine, promotion, targets, urls
    from dagster_alembic import audit, embedded, engine, promotion, targets, urls

    if _own_process:
        # What the imports built lives until the process ends: frozen, no collection (during
        # the run, or the interpreter's last one at exit) walks it again. Measured: one
        # pending revision at N=1,000 took 0.56 s, 0.45 s with this (bench/README.md).
        gc.freeze()
        gc.enable()


# True in the `migrate` process (entry()), not when main() is called from Python.
_own_process = False


def entry() -> NoReturn:
    """The `migrate` and `dagster-alembic` commands: main() in a process of its own.

    Python's cyclic garbage collector would walk the tens of thousands of objects that
    importing SQLAlchemy and Alembic creates, repeatedly while they are imported and once
    more at exit, and they are never garbage: it is off until the imports are done, and
    what they built is then frozen (gc.freeze), as Python's documentation suggests for
    long-lived objects. Garbage made by the command itself is collected as usual.
    """
    global _own_process
    _own_process = True
    gc.disable()
    sys.exit(main())


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
Run this project's Alembic migrations against an environment's PostgreSQL database,
with an advisory lock, timeouts, verification and an audit row for every step.

Environments and their URL variables are in migrate.toml (DEV_DATABASE_URL, ...);
with none set, an embedded PostgreSQL in .pgdata/ is started and used (a variable set
to an empty string is an error, not "unset"). The first line of output names the
environment and its database, password masked (--json: the "target" key).
Like alembic, reads ./alembic.ini unless -c/--config or $ALEMBIC_CONFIG names another.
"""

EPILOG = """\
exit codes: 0 success, 1 migration or verify failed (or an internal error, with its
traceback), 2 bad usage or configuration (one line on stderr, nothing changed)
examples:
  migrate status
  migrate upgrade --env staging --schema ecommerce
  migrate downgrade --schema analytics --to -1
  migrate verify --json
  migrate ui                       # the Dagster UI, on the embedded default if no URL is set
"""


# --- output: every line masked, the first naming the target --------------------------------


class _Output:
    """sys.stdout or sys.stderr while `migrate` runs: every write goes through
    urls.redact; before stdout's first write, the target line (if known by then)."""

    def __init__(self, stream: IO[str], first_line: Callable[[], str | None] | None = None):
        self._stream = stream
        self._first_line = first_line
        self._started = False

    def write(self, text: str) -> int:
        if text:
            self.start()
        self._stream.write(urls.redact(text))
        return len(text)

    def start(self) -> None:
        """The target line, once, even when nothing else goes to stdout (a run that failed
        before its first step reports on stderr only)."""
        if not self._started:
            self._started = True
            line = self._first_line() if self._first_line else None
            if line:
                self._stream.write(urls.redact(line) + "\n")
                self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Target:
    """The database the command works on, as engine.connect reports it (first connect)."""

    def __init__(self, settings: ProjectSettings | None = None, json_output: bool = False):
        self.settings = settings
        self.json_output = json_output
        self.environment: str | None = None
        self.url: URL | None = None
        self.embedded = False
        self.prefix = ""  # "-- " keeps `migrate plan` output valid SQL

    def __call__(self, environment: str, url: URL) -> None:
        if self.url is None:
            self.environment, self.url = environment, url
            if self.settings is not None:  # read as connect did: it cannot fail now
                with contextlib.suppress(ConfigurationError):
                    self.embedded = targets.uses_embedded(self.settings)

    def shown(self) -> str | None:
        return None if self.url is None else urls.display_url(self.url)

    def line(self) -> str | None:
        """The first line of text output: ``dev: postgresql+psycopg2://u:***@h:5432/db``."""
        if self.url is None or self.json_output:
            return None
        embedded_mark = " (embedded)" if self.embedded else ""
        return f"{self.prefix}{self.environment}: {self.shown()}{embedded_mark}"


_target = _Target()


def _short(revision: str | None) -> str:
    return revision or "base"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _with_target(data: dict[str, Any], shown: str, embedded: bool) -> dict[str, Any]:
    head = {k: data[k] for k in ("environment",) if k in data}
    return {**head, "target": shown, "embedded": embedded, **data}


def _print_json(data: dict[str, Any]) -> None:
    """The command's JSON document, with the target after "environment", passwords masked."""
    if _target.url is not None:
        data = _with_target(data, str(_target.shown()), _target.embedded)
    print(json.dumps(urls.redact_data(data), indent=2, default=str))


def _progress_printer(header: str) -> Any:
    """One line per step as it ends, so a long run shows where it is."""
    printed: list[bool] = []

    def progress(row: audit.AuditRow) -> None:
        # Runs inside the step's transaction: a reader that went away (`| head`) must not
        # fail the migration, so output errors end the progress, not the step.
        if False in printed:
            return
        try:
            if not printed:  # the header waits for a first step: bad input prints one line
                print(header, flush=True)
                printed.append(True)
            _print_step(row)
        except OSError:
            printed.append(False)

    return progress


def _print_step(row: audit.AuditRow) -> None:
    mark = "ok  " if row.success else "FAIL"
    arrow = f"{_short(row.prev_alembic_version)} -> {_short(row.alembic_version)}"
    took = f"({row.duration_ms:.0f} ms)"
    print(f"  {mark} {row.schema_name:<12} {arrow:<29} {row.message or ''} {took}", flush=True)
    if row.error:
        print(f"       {row.error.splitlines()[0]}", flush=True)


# --- commands ----------------------------------------------------------------------------


def cmd_status(project: MigrationProject, args: argparse.Namespace) -> int:
    warnings: list[str] = []
    statuses = engine.status(project, args.env, args.schema, warnings=warnings)
    if args.json:
        _print_json(_status_document(args.env, statuses, warnings))
    else:
        print(_status_text(args.env, statuses), flush=True)
    # after the table, whose first line names the target: on a terminal both streams mix
    for warning in warnings:
        print(f"migrate: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _status_document(env: str, statuses: Sequence[Any], warnings: list[str]) -> dict[str, Any]:
    return {"environment": env, "schemas": [s.to_dict() for s in statuses], "warnings": warnings}


def _status_text(env: str, statuses: Sequence[Any]) -> str:
    rows = [
        (s.schema, _short(s.current), s.head, "yes" if s.at_head else f"{len(s.pending)} pending")
        for s in statuses
    ]
    return f"environment: {env}\n" + _table(("schema", "current", "head", "at head"), rows)


def cmd_plan(project: MigrationProject, args: argparse.Namespace) -> int:
    _target.prefix = "-- "
    plans = engine.plan(project, args.env, args.schema)
    linted = _plan_lint(project, args.env, plans)
    if args.json:
        schemas = [p.to_dict() for p in plans]
        for schema in schemas:
            schema["lint"] = (
                linted
                if isinstance(linted, str)
                else [
                    {"revision": r.revision, **f.to_dict()}
                    for r, f in linted.findings()
                    if r.schema == schema["schema"]
                ]
            )
        _print_json({"environment": args.env, "schemas": schemas})
        return EXIT_OK
    for p in plans:
        if not p.steps:
            print(f"-- {args.env} {p.schema}: at head, nothing to run\n")
            continue
        print(f"-- {args.env} {p.schema}: {len(p.steps)} revision(s) pending")
        print(p.sql)
        _print_plan_lint(p.schema, linted, args.env)
    return EXIT_OK


def _plan_lint(project: MigrationProject, env: str, plans: Sequence[Any]) -> Any:
    """Lint of plan's pending revisions, or the line saying why there is none (no squawk:
    one which() call, nothing rendered)."""
    from dagster_alembic import lint

    if lint.find_squawk() is None:
        return f"lint: squawk is not installed (pip install {lint.SQUAWK_PACKAGE}): not linted"
    return lint.lint_revisions(project, env, [r for p in plans for r in p.steps])


def _print_plan_lint(schema: str, linted: Any, env: str) -> None:
    if isinstance(linted, str):
        print(f"-- {linted}\n")
        return
    found = [(r, f) for r, f in linted.findings() if r.schema == schema]
    counts = {s: sum(f.severity == s for _, f in found) for s in ("error", "warning", "ignored")}
    summary = ", ".join(f"{n} {s}(s)" for s, n in counts.items()) if found else "clean"
    print(f"-- lint {schema} (squawk {linted.squawk_version}, {env} rules): {summary}")
    for revision, f in found:
        what = f.reason if f.severity == "ignored" else f.excerpt or f.statement
        print(f"--   {f.severity:<7} {revision.revision} {f.rule}: {' '.join(what.split())}")
    print()


def cmd_lint(project: MigrationProject, args: argparse.Namespace) -> int:
    """squawk over each pending revision's offline SQL (every revision with --all)."""
    from dagster_alembic import lint

    result = lint.lint(project, args.env, args.schema, all_revisions=args.all)
    code = EXIT_OK if result.ok else EXIT_FAILED
    for warning in result.warnings:
        print(f"migrate: warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json(result.to_dict())
        return code
    what = "every revision" if args.all else "pending revisions"
    print(f"lint {args.env}: {what} (squawk {result.squawk_version}, {args.env} rules)")
    if not result.revisions:
        print(f"{args.env}: nothing pending to lint (--all lints every revision)")
        return code
    root = project.settings.root
    for linted in result.revisions:
        r = linted.revision
        path = os.path.relpath(r.path, root) if r.path.is_relative_to(root) else str(r.path)
        print(f"{r.schema} {r.revision} {path}: {'clean' if not linted.findings else ''}".rstrip())
        for f in linted.findings:
            if f.severity == "ignored":
                print(f"  ignored  {f.rule}: {f.reason}")
                continue
            print(f"  {f.severity:<8} {f.rule}: {f.message}")
            if f.help:
                print(f"           help: {f.help}")
            lines = f.statement.splitlines() or [""]
            first = lines[0]
            print(f"           statement: {first}{' ...' if len(lines) > 1 else ''}")
            if f.excerpt and f.excerpt != first:
                print(f"           line {f.line}: {f.excerpt}")
    counts = result.counts()
    print(
        f"{args.env}: {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['ignored']} ignored in {len(result.revisions)} revision(s)"
    )
    return code


def _report_run(result: engine.RunResult, args: argparse.Namespace) -> int:
    for warning in result.warnings:
        print(f"migrate: warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json(result.to_dict())
    elif result.ok:
        verb = "applied" if result.operation == "upgrade" else "reverted"
        if result.steps:
            print(f"{args.env}: {len(result.steps)} revision(s) {verb}")
        else:
            print(f"{args.env}: nothing to do")
    else:
        if isinstance(sys.stdout, _Output):
            sys.stdout.start()
        print(result.failure_line, file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


_REVISION_ID = re.compile(r"^[A-Za-z0-9_]+$")
_STEPS_BACK = re.compile(r"^-(\d+)$")


def _check_to(project: MigrationProject, to: str, *, downgrade: bool) -> None:
    """--to before anything connects: head (upgrade), base or -N (downgrade), or a
    revision id of the project."""
    if to == ("base" if downgrade else "head"):
        return
    steps = _STEPS_BACK.match(to)
    if downgrade and steps:
        if int(steps.group(1)) == 0:
            raise ConfigurationError(f"--to {to}: give how many steps back, -1 or more")
        return
    if not _REVISION_ID.match(to) and project.revision(to) is None:
        allowed = "base, -N or a revision id" if downgrade else "head or a revision id"
        raise ConfigurationError(f"--to {to!r} is not a revision id: use {allowed}")
    project.resolve(to)  # an unknown revision, before connecting


def cmd_upgrade(project: MigrationProject, args: argparse.Namespace) -> int:
    first = args.env == project.settings.environment_names[0]
    if args.to is not None or first:  # the operator's own target, or head: one run
        to = args.to or "head"
        _check_to(project, to, downgrade=False)
        if not first and not args.json:
            _warn_past_promotion(project, args.env, to, args.schema)
        header = f"upgrading {args.env} ({', '.join(args.schema or project.schemas)}) to {to}"
        result = engine.upgrade(
            project,
            args.env,
            schemas=args.schema,
            to=to,
            on_step=None if args.json else _progress_printer(header),
        )
        return _report_run(result, args)
    # Head in the first environment; after it, what the environment before verified.
    header = f"upgrading {args.env} ({', '.join(args.schema or project.schemas)})"
    result, _ = promotion.upgrade(
        project,
        args.env,
        args.schema,
        on_step=None if args.json else _progress_printer(header),
        on_plan=None if args.json else (lambda p: print(p.reason, flush=True)),
    )
    return _report_run(result, args)


def _warn_past_promotion(
    project: MigrationProject, env: str, to: str, schemas: list[str] | None
) -> None:
    """An explicit --to after the first environment is the operator's own call; say when
    it goes past what the environment before is at and verified (Dagster's job refuses)."""
    if to == "head":
        wanted = {s: project.head(s) for s in project.select_schemas(schemas)}
    else:
        revision = project.resolve(to)
        wanted = {revision.schema: revision.revision}
    for p in promotion.plan(project, env, list(wanted)):
        rev = wanted.get(p.schema)
        if rev is not None and rev not in promotion.lineage(project, p.target):
            if isinstance(sys.stdout, _Output):
                sys.stdout.start()
            print(
                f"migrate: warning: {env}/{p.schema}: --to {to} goes past what {p.previous} "
                f"is at and verified ({p.target or 'nothing'}): applied as asked",
                file=sys.stderr,
            )


def cmd_downgrade(project: MigrationProject, args: argparse.Namespace) -> int:
    _check_to(project, args.to, downgrade=True)
    named = args.schema or (list(project.schemas) if len(project.schemas) == 1 else [])
    header = f"downgrading {args.env} ({', '.join(named)}) to {args.to}"
    result = engine.downgrade(
        project,
        args.env,
        schemas=args.schema,
        to=args.to,
        allow_data_loss=args.allow_data_loss,
        on_step=None if args.json else _progress_printer(header),
    )
    return _report_run(result, args)


def cmd_verify(project: MigrationProject, args: argparse.Namespace) -> int:
    def show(results: Sequence[Any]) -> None:  # before the rows are committed
        if args.json:
            _print_json(_verify_document(args.env, results))
        else:
            print(_verify_text(args.env, results))
        sys.stdout.flush()

    results = promotion.verify(project, args.env, args.schema, report=show)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _verify_document(env: str, results: Sequence[Any]) -> dict[str, Any]:
    ok = all(r.ok for r in results)
    return {"environment": env, "ok": ok, "schemas": [r.to_dict() for r in results]}


def _verify_text(env: str, results: Sequence[Any]) -> str:
    lines = []
    for r in results:
        lines.append(f"{'PASS' if r.ok else 'FAIL'} {env}/{r.schema} at {_short(r.current)}")
        lines += [f"     {f.severity}: {f.message}" for f in r.findings]
    return "\n".join(lines)


def cmd_baseline(project: MigrationProject, args: argparse.Namespace) -> int:
    results = engine.baseline(project, args.env, args.schema)
    if args.json:
        _print_json({"environment": args.env, "schemas": [r.to_dict() for r in results]})
        return EXIT_OK
    for r in results:
        print(
            f"baseline {args.env}/{r.schema} at {_short(r.current)}: "
            "the live schema is now the reference"
        )
        for difference in r.accepted_drift:
            print(f"     accepted: {difference}")
        if r.recorded_checksums:
            print(f"     checksums recorded for {len(r.recorded_checksums)} applied revision(s)")
        print(f"     audit row(s): {', '.join(str(i) for i in r.audit_ids)}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """Before any setting can be read: init is what makes the project readable."""
    from dagster_alembic import adopt
    from dagster_alembic.settings import find_alembic_ini_path

    result = adopt.init(find_alembic_ini_path(args.config), args.schema_name)
    if args.json:
        _print_json(result.to_dict())
        return EXIT_OK
    for folder, schema in result.histories.items():
        print(f"history {folder}/ manages schema {schema}")
    if result.wrote:
        for path in result.wrote:
            print(f"wrote {path}")
    else:
        print("nothing to do: the project is already wired in")
    if result.carried:
        print(f"env.py hands on its configure() options: {', '.join(result.carried)}")
    for note in result.notes:
        print(f"note: {note}")
    print(
        "next: set DEV_DATABASE_URL, STAGING_DATABASE_URL, PROD_DATABASE_URL (or none, for the "
        "embedded PostgreSQL), then `migrate status`; a database plain alembic already "
        "migrated: `migrate baseline`"
    )
    return EXIT_OK


def _check_writable(option: str, value: str) -> Path:
    """A file the command will write, checked before anything connects."""
    path = Path(value)
    folder = path.parent
    if path.is_dir():
        why = "it is a folder"
    elif not folder.is_dir():
        why = f"folder {folder} does not exist"
    elif not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        why = "permission denied"
    else:
        return path
    raise ConfigurationError(f"cannot write {option} {value}: {why}")


def cmd_audit(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """Reads no revision file: the history stays readable while one is broken."""
    settings.environment(args.env)
    if args.limit < 1:
        raise ConfigurationError(f"--limit must be a whole number >= 1, got {args.limit}")
    plot = _check_writable("--plot", args.plot) if args.plot else None
    rows = engine.history(settings, args.env, schemas=args.schema, limit=args.limit)
    if plot:
        from dagster_alembic.plot import audit_timeline

        picture = audit_timeline(rows, f"alembic_version_history in {args.env}")
        try:
            plot.write_text(picture)
        except OSError as exc:
            raise ConfigurationError(f"cannot write --plot {args.plot}: {exc.strerror}") from None
        print(f"wrote {args.plot} ({len(rows)} audit rows)", file=sys.stderr)
    if args.json:
        _print_json({"environment": args.env, "rows": [r.to_dict() for r in rows]})
        return EXIT_OK
    print(f"alembic_version_history in {args.env} (newest first)")
    table_rows = [
        (
            r.id,
            r.changed_at.strftime("%Y-%m-%d %H:%M:%S") if r.changed_at else "",
            r.schema_name,
            r.operation,
            r.operation_direction or "",
            _short(r.prev_alembic_version),
            _short(r.alembic_version),
            "yes" if r.success else "NO",
            f"{r.duration_ms:.0f}" if r.duration_ms is not None else "",
            (r.revision_checksum or "")[:12],
            r.run_id or "",
            (r.error or "").splitlines()[0][:60] if r.error else "",
        )
        for r in rows
    ]
    headers = (
        "id",
        "changed_at",
        "schema",
        "operation",
        "direction",
        "from",
        "to",
        "ok",
        "ms",
        "checksum",
        "run_id",
        "error",
    )
    print(_table(headers, table_rows))
    return EXIT_OK


def _dagster_env(project_settings: Any) -> dict[str, str]:
    from dagster_alembic import launcher  # YAML: only the Dagster commands need it

    env = launcher.dagster_environment(project_settings)
    env["DAGSTER_HOME"] = str(launcher.prepare_dagster_home(project_settings))
    return env


def cmd_env(settings: Any, args: argparse.Namespace) -> int:
    """Print what dagster-webserver / dagster-daemon need, for `eval "$(migrate env)"`."""
    for name, value in _dagster_env(settings).items():
        if urls.has_password(value):
            print(f"# {name} is set in your environment (holds a password: not printed)")
        else:
            print(f"export {name}={shlex.quote(value)}")
    return EXIT_OK


def cmd_ui(settings: Any, args: argparse.Namespace) -> int:
    """Start what Dagster needs, then hand over to `dg dev` (same process)."""
    env = {**os.environ, **_dagster_env(settings)}
    workspace = settings.root / "workspace.yaml"
    extra = args.dagster_args[1:] if args.dagster_args[:1] == ["--"] else args.dagster_args
    # dg dev, today's convention (dagster dev warns that dg dev supersedes it); with -w it
    # needs no dg project around it.
    argv = [sys.executable, "-m", "dagster_dg_cli.cli", "dev", "-w", str(workspace), *extra]
    print(f"DAGSTER_HOME={env['DAGSTER_HOME']}; running: dg dev -w {workspace}", flush=True)
    # From DAGSTER_HOME: dagster dev warns about a dagster.yaml in its working directory,
    # and workspace.yaml sets the code location's own working directory.
    os.chdir(env["DAGSTER_HOME"])
    os.execve(sys.executable, argv, env)
    return EXIT_OK  # not reached


def cmd_server(settings: Any, args: argparse.Namespace) -> int:
    """The embedded PostgreSQL: where it is, whether it runs; stop it."""
    folder = embedded.data_dir(settings.root)
    if args.action == "stop":
        stopped = embedded.stop_server(settings.root)
        print(f"embedded PostgreSQL in {folder}: {'stopped' if stopped else 'was not running'}")
        return EXIT_OK
    running = (folder / "postmaster.pid").exists()
    print(f"embedded PostgreSQL in {folder}: {'running' if running else 'not running'}")
    if targets.uses_embedded(settings):
        print("used: no environment URL is set")
    else:
        print("not used: environment URLs are set")
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"migrate: error: {message} (see {self.prog} --help)\n")


class _NotFast(Exception):
    """The fast path does not answer this command: the full path does."""


class _QuietParser(_Parser):
    """The fast path's parser: help, usage and errors are the full path's to print."""

    def error(self, message: str) -> NoReturn:
        raise _NotFast(message)

    def _print_message(self, message: str, file: Any = None) -> None:
        raise _NotFast(message)


def build_parser(parser_class: type[_Parser] = _Parser) -> argparse.ArgumentParser:
    parser = parser_class(
        prog="migrate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c", "--config", help="path to alembic.ini (default: $ALEMBIC_CONFIG or ./alembic.ini)"
    )
    common = parser_class(add_help=False)
    common.add_argument("--env", default="dev", help="environment from migrate.toml (default: dev)")
    common.add_argument(
        "--schema",
        action="append",
        help="schema (Alembic branch) to act on; repeat for several (default: all)",
    )
    common.add_argument("--json", action="store_true", help="print JSON for machines")

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    add("status", cmd_status, "current revision, head and pending revisions per schema")
    add("plan", cmd_plan, "print the SQL that upgrade would run; changes nothing")
    lint_parser = add(
        "lint",
        cmd_lint,
        "run squawk over the offline SQL of each pending revision, with migrate.toml's "
        "[lint] rules for the environment; exit 1 on a finding at error level",
    )
    lint_parser.add_argument(
        "--all", action="store_true", help="every revision, not only pending ones (no database)"
    )
    up = add(
        "upgrade",
        cmd_upgrade,
        "apply pending revisions (one transaction each); after the first environment, only "
        "as far as the environment before it is and verified (a --to past that is applied, "
        "with a warning)",
    )
    up.add_argument(
        "--to",
        help="head or a revision id to upgrade to (default: head in the first environment; "
        "after it, the revision the environment before is at and verified)",
    )
    down = add(
        "downgrade",
        cmd_downgrade,
        "revert revisions of a schema (needs --schema, unless the project has one schema)",
    )
    down.add_argument(
        "--to", required=True, help="revision id to go back to, -N for N steps, or base"
    )
    down.add_argument(
        "--allow-data-loss",
        action="store_true",
        help="go ahead even if a step drops a table or column that holds rows",
    )
    add(
        "verify",
        cmd_verify,
        "check each schema: at head (after the first environment: where promotion takes it), "
        "revision files unchanged since applied, no drift from the catalog snapshot, no "
        "INVALID index, revision verify() hooks pass",
    )
    add(
        "baseline",
        cmd_baseline,
        "accept each schema as it is now: its live catalog becomes the reference verify "
        "compares with (drift made by hand is reported until this), and applied revisions' "
        "checksums are recorded where none are (a database plain alembic migrated); audited",
    )
    init = sub.add_parser(
        "init",
        help="wire an existing Alembic project in (writes migrate.toml, ends env.py with the "
        "pipeline's call); no revision file is touched; a second run changes nothing",
        description="Run in an Alembic project's folder. Finds its histories (version_locations, "
        "or Alembic's default <script_location>/versions), writes migrate.toml (environments, "
        "and the PostgreSQL schema each history manages: public for a single history unless "
        "--schema), and replaces env.py's closing offline/online dispatch with "
        "runtime.run_migrations(context, ...), handing on its context.configure() options "
        "(target_metadata, include_object, version_table, ...).",
    )
    init.add_argument(
        "--schema",
        dest="schema_name",
        help="the PostgreSQL schema a single history manages (default: public)",
    )
    init.add_argument("--json", action="store_true", help="print JSON for machines")
    init.set_defaults(handler=None, needs_project=False)
    audit_parser = add("audit", cmd_audit, "show the newest rows of alembic_version_history")
    audit_parser.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    audit_parser.add_argument(
        "--plot", metavar="FILE", help="also draw the rows as a timeline picture (SVG) in FILE"
    )
    audit_parser.set_defaults(needs_project=False)  # readable while a revision file is broken
    ui = sub.add_parser(
        "ui",
        help="start the Dagster UI (dg dev) with PostgreSQL storage",
        description="Start the embedded PostgreSQL when no URL is set, export the "
        "environments' URLs and DAGSTER_POSTGRES_URL, put dagster.yaml in $DAGSTER_HOME "
        "(default .dagster_home/), then run `dg dev -w workspace.yaml`. Arguments "
        "after -- go to dg dev (e.g. -- -p 3001).",
    )
    ui.add_argument("dagster_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ui.set_defaults(handler=cmd_ui, needs_project=False)
    env = sub.add_parser(
        "env",
        help='print the variables Dagster\'s processes need, for eval "$(migrate env)"',
        description="Print export lines for the environments' URLs, DAGSTER_POSTGRES_URL "
        "and DAGSTER_HOME, as `migrate ui` sets them, to run dagster-webserver and "
        "dagster-daemon yourself. Values holding a password are not printed.",
    )
    env.set_defaults(handler=cmd_env, needs_project=False)
    server = sub.add_parser(
        "server",
        help="status or stop of the embedded PostgreSQL",
        description="The embedded PostgreSQL (data in .pgdata/ or $MIGRATE_EMBEDDED_DIR) "
        "starts on first use and keeps running for later commands; `stop` stops it.",
    )
    server.add_argument("action", choices=["status", "stop"])
    server.set_defaults(handler=cmd_server, needs_project=False)
    return parser


def _interrupted_by_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Everything it prints, on stdout and stderr, goes through
    urls.redact (or, on the fast path, is text that redact leaves as it is); the first
    line of stdout names the target database."""
    global _target
    _target = _Target()
    stdout, stderr = sys.stdout, sys.stderr
    # SIGTERM (a stopped container, a killed CI job) is an interrupt like Ctrl-C: the running
    # statement is cancelled and the step audited, instead of the process vanishing.
    terminate = signal.getsignal(signal.SIGTERM)
    interrupt = signal.getsignal(signal.SIGINT)  # an interrupt ignores the next ones (_run)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted_by_sigterm)
    token = None
    try:
        try:
            fast = _fast(argv, stdout, stderr)
            if fast.code is not None:
                return fast.code
            _import_engine()
        except KeyboardInterrupt:  # nothing committed: verify's rows are written at its end
            print("migrate: interrupted", file=stderr)
            return 130
        except BrokenPipeError:
            raise
        except Exception as exc:  # a bug on the fast path (or writing its answer)
            _internal_error(exc, stderr)
            return EXIT_FAILED
        sys.stdout = _Output(stdout, first_line=lambda: _target.line())
        sys.stderr = _Output(stderr)
        token = engine.on_connect.set(lambda environment, url: _target(environment, url))
        code = _run(argv, fast.project)
        if code == EXIT_OK and fast.settings is not None:
            with contextlib.suppress(Exception):  # a cache: never fails a run that worked
                fastpath.learn_audit_probe(fast.settings, fast.probe)
        return code
    except BrokenPipeError:  # stdout's reader left (`migrate plan | head`): not an error
        # the interpreter's last flush of the closed pipe stays silent
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return EXIT_OK
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, terminate)
            if not _own_process:  # a caller's process (and all it starts) keeps Ctrl-C;
                # the command's own process keeps ignoring further ones until it exits
                signal.signal(signal.SIGINT, interrupt)
        if token is not None:
            engine.on_connect.reset(token)
        sys.stdout, sys.stderr = stdout, stderr


def _internal_error(exc: Exception, stderr: IO[str]) -> None:
    """A bug's one line and traceback, as _run prints them, through urls.redact: every
    password of a URL in the environment is masked (the fast path registered none)."""
    from dagster_alembic import urls as masking

    for value in os.environ.values():
        if "://" in value or "password=" in value.lower():
            masking.register_url(value)
    text = f"migrate: internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    stderr.write(masking.redact(text))


class _FastAnswer:
    """The fast path's outcome: an exit code (it answered), or what the full path may
    teach it for next time (the settings and the audit tables' probe it saw)."""

    def __init__(
        self,
        code: int | None = None,
        settings: ProjectSettings | None = None,
        probe: Any = None,
        project: MigrationProject | None = None,
    ):
        self.code, self.settings, self.probe = code, settings, probe
        self.project = project  # the files as the fast path read them: not read twice


def _fast(argv: Sequence[str] | None, stdout: IO[str], stderr: IO[str]) -> _FastAnswer:
    """`migrate status`, `migrate upgrade` with nothing to do, and `migrate verify` in the
    first environment, from cached settings, the scan cache and psycopg2 alone
    (fastpath.py); anything else is the full path's."""
    try:
        args = build_parser(_QuietParser).parse_args(argv)
    except _NotFast:
        return _FastAnswer()
    upgrade = args.command == "upgrade"
    if args.command not in ("status", "upgrade", "verify"):
        return _FastAnswer()
    cache = fastpath.cached(args.config)
    if cache is None:
        return _FastAnswer()
    settings = cache.settings
    names = settings.environment_names
    # Head in the first environment, or --to head: later environments follow promotion.
    if upgrade and not (args.to == "head" or (args.to is None and args.env == names[0])):
        return _FastAnswer()
    if args.command == "verify" and args.env != names[0]:
        return _FastAnswer()  # promotion.verify: what the environment before verified
    writes = args.command != "status"  # its audit tables must be as ensure_table leaves them
    try:
        if args.env not in names:
            return _FastAnswer()
        project = MigrationProject(settings)
        schemas = project.select_schemas(args.schema)
        where = fastpath.target(settings, args.env)
        if where is None or (writes and cache.audit_probe is None):
            return _FastAnswer(settings=settings if writes else None, project=project)
        if args.command == "verify":
            return _fast_verify(args, cache, project, schemas, where, stdout, stderr)
        database = fastpath.read_database(
            settings, where, probe=cache.audit_probe if upgrade else None, lock=upgrade
        )
    except fastpath.Declined:
        return _FastAnswer()  # the full path reads again and reports in its own words
    except fastpath.Unreachable as exc:
        assert where is not None  # only a target is connected to
        message = f"migrate: error: {exc}\n"
        if fastpath.needs_masking(message.replace(where.display, ""), where):
            return _FastAnswer()
        stderr.write(message)
        return _FastAnswer(EXIT_USAGE)
    except ConfigurationError:
        return _FastAnswer()
    out, err = "", ""
    if upgrade:
        if database.locked_out or not fastpath.nothing_to_upgrade(
            project, database.heads or (), args.schema
        ):
            return _FastAnswer(project=project)
        if not fastpath.audit_ready(cache, database.audit_probe):
            return _FastAnswer(settings=settings, probe=database.audit_probe, project=project)
        result = {"environment": args.env, "operation": "upgrade", "ok": True, "error": None}
        document: dict[str, Any] = {**result, "warnings": [], "steps": []}
        out = f"{args.env}: nothing to do"
    else:
        warnings = project.state_warnings(database.heads or (), args.env, schemas)
        found = project.statuses(database.heads or (), schemas)
        err = "".join(f"migrate: warning: {w}\n" for w in warnings)
        document = _status_document(args.env, found, warnings)
        out = _status_text(args.env, found)
    if args.json:
        if fastpath.needs_masking(document, where):
            return _FastAnswer()
        out = _json_text(document, where.display)
    else:
        out = f"{args.env}: {where.display}\n{out}"
    if fastpath.needs_masking((out + err).replace(where.display, ""), where):
        return _FastAnswer()
    stdout.write(out + "\n")
    stdout.flush()
    stderr.write(err)  # after the first line, which names the target (as the full path)
    return _FastAnswer(EXIT_OK)


def _fast_verify(
    args: argparse.Namespace,
    cache: Any,
    project: MigrationProject,
    schemas: list[str],
    where: fastpath.Target,
    stdout: IO[str],
    stderr: IO[str],
) -> _FastAnswer:
    """verify on the fast path: its rows are written once its output is known to be the
    full path's (no text to mask), so that declining never leaves a row behind; committed
    once that output is printed, as the full path does."""
    try:
        with fastpath.session(where) as cur:
            verified = fastpath.verify(cur, cache, project, schemas, args.env)
            if verified.results is None:
                return _FastAnswer(settings=cache.settings, probe=verified.probe, project=project)
            body = _verify_text(args.env, verified.results)
            if fastpath.needs_masking(body, where) or fastpath.needs_masking(
                _verify_document(args.env, verified.results), where
            ):
                return _FastAnswer(project=project)  # nothing written: the full path verifies
            fastpath.record(cur, verified, args.env)
            if args.json:
                out = _json_text(_verify_document(args.env, verified.results), where.display)
            else:
                out = f"{args.env}: {where.display}\n{body}"
            stdout.write(out + "\n")
            stdout.flush()
            fastpath.commit(cur, args.env)
    except fastpath.Failed as exc:
        message = f"migrate: failed: {exc}\n"
        if fastpath.needs_masking(message, where):  # rare: worth SQLAlchemy's import
            from dagster_alembic import urls as masking

            for secret in where.secrets:
                masking.register_password(secret)
            message = masking.redact(message)
        stderr.write(message)
        return _FastAnswer(EXIT_FAILED)
    return _FastAnswer(EXIT_OK if all(r.ok for r in verified.results) else EXIT_FAILED)


def _json_text(data: dict[str, Any], shown: str) -> str:
    return json.dumps(_with_target(data, shown, False), indent=2, default=str)


# Commands that run no migration: checking alembic.ini as Alembic reads it (load_settings)
# would import Alembic for them alone.
_NO_ALEMBIC = ("status", "verify")


def _settings(args: argparse.Namespace) -> ProjectSettings:
    """load_settings; for a command that runs no migration, what it returned last time for
    the same alembic.ini and migrate.toml bytes (fastpath.cached), when kept."""
    if args.command in _NO_ALEMBIC:
        cache = fastpath.cached(args.config)
        if cache is not None:
            return cache.settings
    settings = load_settings(args.config)
    fastpath.remember_settings(settings)
    return settings


def _run(argv: Sequence[str] | None, read: MigrationProject | None = None) -> int:
    """The command, on the full path; ``read``: the project the fast path read, reused
    when load_settings returns the settings it was read with."""
    args = build_parser().parse_args(argv)
    urls.register_url(os.environ.get(fastpath.STORAGE_ENV))
    try:
        if args.command == "init":
            return cmd_init(args)
        settings = _settings(args)
        _target.settings, _target.json_output = settings, bool(getattr(args, "json", False))
        if not getattr(args, "needs_project", True):
            return int(args.handler(settings, args))
        settings.environment(args.env)  # an unknown environment fails before anything runs
        same = read is not None and read.settings == settings
        project = read if same and read is not None else MigrationProject(settings)
        code: int = args.handler(project, args)
        return code
    except ConfigurationError as exc:
        print(f"migrate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MigrationError as exc:
        print(f"migrate: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one interrupt is enough: finish
        print("migrate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # main() handles it
    except Exception as exc:  # a bug, not a failed migration: keep its traceback
        print(f"migrate: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    entry()
