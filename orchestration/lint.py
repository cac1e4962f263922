"""Lint: squawk (PyPI ``squawk-cli``) over the offline SQL of each revision, before it runs.

Never imports dagster. Each revision's SQL is rendered on its own, as ``migrate plan`` renders
it (Alembic's offline mode, ``command.upgrade(config, "<from>:<rev>", sql=True)``), all the
revisions are linted in one squawk run, and each finding becomes a value: the revision, its
file, the statement, squawk's rule and help, and the severity migrate.toml's ``[lint]`` gives
that rule in the environment. What Alembic writes itself (BEGIN/COMMIT of a revision's
transaction and of an autocommit block, the version table's statements, the "-- Running"
comment) is linted with the revision, so that squawk sees the real transactions, but is
never reported: only statements that the revision's own code emits are.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from alembic import command

from dagster_alembic import audit, engine, lazyscript
from dagster_alembic.errors import ConfigurationError, MigrationError
from dagster_alembic.revisions import MigrationProject, Revision
from dagster_alembic.settings import parse_duration
from dagster_alembic.targets import database_url

SQUAWK_PACKAGE = "squawk-cli==2.70.0"

# Names squawk accepts for a rule it reports under another name.
ALIASES: dict[str, tuple[str, ...]] = {
    "prefer-timestamptz": ("prefer-timestamp-tz",),
    "require-timeout-settings": ("require-lock-timeout", "require-statement-timeout"),
}
# A revision whose SQL cannot be rendered offline (it reads rows through op.get_bind()):
# squawk has nothing to read, so lint reports that itself, at this rule's severity, and the
# revision's squawk_ignore can name it once someone reviewed the revision by hand.
OFFLINE_RENDER = "offline-render"
# Reported by squawk (syntax-error) or by lint (offline-render) without being rules squawk
# accepts in --include/--exclude.
PSEUDO_RULES = frozenset({"syntax-error", OFFLINE_RENDER})
# The revision-level variable a revision silences rules with, read as text (never imported).
IGNORE_VARIABLE = "squawk_ignore"
# The level of a rule that migrate.toml does not name, when it names no default either.
DEFAULT_SEVERITY = "warning"


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LintFinding:
    """One squawk finding on a statement of a revision, at the environment's severity
    (``error`` or ``warning``), or ``ignored`` by the revision itself with ``reason``."""

    rule: str
    severity: str
    message: str
    help: str | None
    statement: str
    line: int  # 1-based, in the revision's offline SQL (``sql``)
    excerpt: str = ""  # that line, where squawk points in the statement
    reason: str | None = None

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "help": self.help,
            "statement": self.statement,
            "line": self.line,
            "excerpt": self.excerpt,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RevisionLint:
    revision: Revision
    sql: str  # what squawk read: the revision's offline SQL with Alembic's own statements
    findings: tuple[LintFinding, ...]

    def to_dict(self) -> dict:
        return {
            "revision": self.revision.revision,
            "schema": self.revision.schema,
            "message": self.revision.message,
            "path": str(self.revision.path),
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class LintResult:
    environment: str
    squawk_version: str
    revisions: list[RevisionLint] = field(default_factory=list)
    all_revisions: bool = False
    warnings: list[str] = field(default_factory=list)  # e.g. an ignore naming no rule

    def findings(self, severity: str | None = None) -> list[tuple[Revision, LintFinding]]:
        return [
            (r.revision, f)
            for r in self.revisions
            for f in r.findings
            if severity is None or f.severity == severity
        ]

    @property
    def ok(self) -> bool:
        """No finding at error level: exit 0."""
        return not self.findings("error")

    def counts(self) -> dict[str, int]:
        return {s: len(self.findings(s)) for s in ("error", "warning", "ignored")}

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "ok": self.ok,
            "all": self.all_revisions,
            "squawk": self.squawk_version,
            "counts": self.counts(),
            "warnings": self.warnings,
            "revisions": [r.to_dict() for r in self.revisions],
        }


# --- squawk ------------------------------------------------------------------------------


def find_squawk() -> str | None:
    """The squawk binary the squawk-cli wheel installs next to this Python, else on PATH."""
    return shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")


def require_squawk() -> str:
    binary = find_squawk()
    if binary is None:
        raise ConfigurationError(
            f"squawk is not installed: pip install {SQUAWK_PACKAGE} (lint runs the squawk "
            "binary that package carries)"
        )
    return binary


def _squawk(binary: str, args: Sequence[str], cwd: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot run squawk ({binary}): {exc.strerror or exc}") from None


def squawk_version(binary: str) -> str:
    with tempfile.TemporaryDirectory(prefix="migrate-lint-") as folder:
        out = _squawk(binary, ["--version"], folder).stdout.strip()
    return out.removeprefix("squawk").strip() or "unknown"


_INVALID_RULE = re.compile(r"invalid rule name (\S+)")


# --- rules per environment ---------------------------------------------------------------


def canonical(rule: str) -> tuple[str, ...]:
    """The name(s) squawk reports a rule under."""
    return ALIASES.get(rule, (rule,))


@dataclass(frozen=True)
class Rules:
    """The severity of each rule in one environment, resolved from migrate.toml: a rule named
    for the environment, else a rule named in [lint], else the environment's default, else
    [lint]'s default. ``satisfied`` rules are never reported: the pipeline does what they ask."""

    environment: str
    default: str
    named: dict[str, str]
    satisfied: dict[str, str]  # rule -> why the pipeline satisfies it
    sources: dict[str, str]  # rule as written -> where (for a bad name's message)

    def severity(self, rule: str) -> str:
        return self.named.get(rule, self.default)


def rules_for(project: MigrationProject, environment: str) -> Rules:
    settings = project.settings
    env = settings.environment(environment)
    base, own = settings.lint.base, settings.lint.for_environment(environment)
    named: dict[str, str] = {}
    sources: dict[str, str] = {}
    for level, where in ((base, "[lint]"), (own, f"[lint.environments.{environment}]")):
        for rule, severity in level.rules:
            sources[rule] = where
            for name in canonical(rule):
                named[name] = severity
    satisfied: dict[str, str] = {}
    if parse_duration(env.lock_timeout) > 0:
        satisfied["require-lock-timeout"] = (
            f"the pipeline sets lock_timeout = {env.lock_timeout} on every step of {environment}"
        )
    if parse_duration(env.statement_timeout) > 0:
        satisfied["require-statement-timeout"] = (
            f"the pipeline sets statement_timeout = {env.statement_timeout} on every step of "
            f"{environment}"
        )
    return Rules(
        environment=environment,
        # Nothing configured: every finding is shown, none refuses. A project adopted with
        # `migrate init` has applied revisions with findings; a fresh environment (all of
        # them pending) must not be refused for them. Errors are opted into in migrate.toml.
        default=own.default or base.default or DEFAULT_SEVERITY,
        named=named,
        satisfied=satisfied,
        sources=sources,
    )


# --- a revision's own silenced rules ---------------------------------------------------------


def read_ignores(path: Path) -> dict[str, str]:
    """``squawk_ignore = {"rule": "reason", ...}`` at a revision's top level, read as text
    (never imported); {} when there is none. A reason is required."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError) as exc:
        raise ConfigurationError(f"revision file {path}: {exc}") from None
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if not (isinstance(target, ast.Name) and target.id == IGNORE_VARIABLE and value):
            continue
        try:
            found = ast.literal_eval(value)
        except ValueError:
            found = None
        if not isinstance(found, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in found.items()
        ):
            raise ConfigurationError(
                f"{path.name}: {IGNORE_VARIABLE} must be a literal dict of squawk rule name -> "
                'reason, e.g. {"require-concurrent-index-creation": "table has 10 rows"}'
            )
        return {k: " ".join(v.split()) for k, v in found.items()}
    return {}


# --- rendering one revision offline ------------------------------------------------------

_RUNNING = re.compile(r"^-- Running upgrade .* -> (\S+)\s*$")


@dataclass(frozen=True)
class _Piece:
    """One write of Alembic's offline output: a statement (or comment), and whether Alembic
    wrote it itself rather than the revision's code."""

    text: str
    alembic: bool


class _Recorder(io.StringIO):
    """Alembic's output buffer: keeps each write apart and notes who made it, from the call
    stack. A write is the revision's when the revision's file is on the stack (its upgrade(),
    or a helper it calls), unless Alembic's emit_begin/emit_commit made it (an autocommit
    block's COMMIT and BEGIN). Everything else (the per-revision BEGIN/COMMIT, the version
    table, the "-- Running" line) is Alembic's."""

    def __init__(self, revision_file: Path):
        super().__init__()
        self._file = str(revision_file.resolve())
        self.pieces: list[_Piece] = []

    def write(self, text: str) -> int:
        self.pieces.append(_Piece(text, self._by_alembic(sys._getframe(1))))
        return super().write(text)

    def _by_alembic(self, frame: FrameType | None) -> bool:
        revisions = False
        while frame is not None:
            code = frame.f_code
            if code.co_name in ("emit_begin", "emit_commit"):
                return True
            if code.co_filename == self._file or _resolved(code.co_filename) == self._file:
                revisions = True
            frame = frame.f_back
        return not revisions


def _resolved(filename: str) -> str:
    try:
        return str(Path(filename).resolve())
    except OSError:
        return filename


def _start(project: MigrationProject, revision: Revision) -> str:
    """Where to render from so that ``revision`` is the last step: its parent, or for a first
    revision the revision it depends on (as engine.plan does), else base. Revisions rendered
    before it (other parents of a merge, dependencies) are cut off by _segment."""
    if revision.down_revisions:
        return revision.down_revisions[0]
    return revision.depends_on[-1] if revision.depends_on else "base"


def render(project: MigrationProject, environment: str, revision: Revision) -> list[_Piece]:
    """The offline SQL of one revision, write by write, from the BEGIN of its transaction."""
    recorder = _Recorder(revision.path)
    config = engine.offline_config(project, environment, recorder)
    target = f"{_start(project, revision)}:{revision.revision}"
    try:
        # only the modules of the steps rendered are imported, when the files' readings
        # can stand in for Alembic's own map (lazyscript.py); else Alembic's command
        script = lazyscript.script_directory(config, project)
        if script is not None:
            lazyscript.upgrade(config, target, script, sql=True)
        else:
            command.upgrade(config, target, sql=True)
    except Exception as exc:  # a revision that cannot run offline (reads data, raises)
        url = database_url(project.settings, environment)
        raise MigrationError(
            f"cannot render the SQL of revision {revision.revision} ({revision.path.name}) "
            f"offline for lint: {engine.error_text(exc, url)}"
        ) from None
    return _segment(recorder.pieces, revision.revision)


def _segment(pieces: list[_Piece], revision: str) -> list[_Piece]:
    marker = None
    for i, piece in enumerate(pieces):
        match = _RUNNING.match(piece.text.strip())
        if match and piece.alembic and match.group(1) == revision:
            marker = i
    if marker is None:
        raise MigrationError(f"revision {revision}: Alembic rendered no step for it offline")
    start = marker
    for i in range(marker - 1, -1, -1):
        if pieces[i].alembic and pieces[i].text.strip().upper().startswith("BEGIN"):
            start = i
            break
    return pieces[start:]


# --- linting -----------------------------------------------------------------------------


def _one_line(text: str | None) -> str | None:
    return None if text is None else " ".join(text.split())


def _check_names(binary: str, rules: Rules, ignores: dict[Path, dict[str, str]], cwd: str) -> None:
    """Every rule name in migrate.toml and in revisions' squawk_ignore is one squawk knows
    (asked of squawk itself: its --exclude refuses an unknown name)."""
    where: dict[str, str] = {name: f"migrate.toml {src}" for name, src in rules.sources.items()}
    for path, ignored in ignores.items():
        for name in ignored:
            where.setdefault(name, f"{path.name} {IGNORE_VARIABLE}")
    names = sorted(n for n in where if n not in PSEUDO_RULES)
    if not names:
        return
    empty = Path(cwd) / "empty.sql"
    empty.write_text("")
    done = _squawk(binary, [f"--exclude={','.join(names)}", str(empty)], cwd)
    bad = _INVALID_RULE.search(done.stderr)
    if done.returncode != 0 and bad:
        name = bad.group(1).strip("'\"")
        raise ConfigurationError(
            f"{where.get(name, 'migrate.toml [lint]')}: squawk has no rule {name!r} "
            "(README.md, ## Lint, lists them)"
        )


def lint_revisions(
    project: MigrationProject,
    environment: str,
    revisions: Sequence[Revision],
    *,
    all_revisions: bool = False,
) -> LintResult:
    """Lint ``revisions`` (in order) under ``environment``'s rules. No database is read."""
    binary = require_squawk()
    rules = rules_for(project, environment)
    with tempfile.TemporaryDirectory(prefix="migrate-lint-") as folder:
        # squawk reads a .squawk.toml from its working directory up: an empty one here keeps
        # migrate.toml the only configuration.
        (Path(folder) / ".squawk.toml").write_text("")
        ignores = {r.path: read_ignores(r.path) for r in revisions}
        _check_names(binary, rules, ignores, folder)
        result = LintResult(environment, squawk_version(binary), all_revisions=all_revisions)
        if not revisions:
            return result
        rendered: list[list[_Piece]] = []
        unrendered: dict[int, str] = {}
        for i, revision in enumerate(revisions):
            try:
                rendered.append(render(project, environment, revision))
            except MigrationError as exc:
                rendered.append([])
                unrendered[i] = str(exc)
        files = []
        for i, pieces in enumerate(rendered):
            path = Path(folder) / f"r{i:04d}.sql"
            path.write_text("".join(p.text for p in pieces))
            files.append(path)
        excluded = {n for n, s in rules.named.items() if s == "off"} | set(rules.satisfied)
        included = {n for n, s in rules.named.items() if s != "off"} - excluded
        args = ["--reporter", "json", "--config", str(Path(folder) / ".squawk.toml")]
        for option, names in (("--exclude", excluded), ("--include", included)):
            if names - PSEUDO_RULES:
                args.append(f"{option}={','.join(sorted(names - PSEUDO_RULES))}")
        done = _squawk(binary, [*args, *(p.name for p in files)], folder)
    try:
        reported = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        reported = None
    if not isinstance(reported, list) or done.returncode not in (0, 1):
        why = (done.stderr or done.stdout).strip().splitlines()
        raise MigrationError(
            f"squawk failed (exit {done.returncode}): {why[0] if why else 'no output'}"
        )
    by_file: dict[str, list[dict]] = {}
    for item in reported:
        by_file.setdefault(Path(str(item.get("file", ""))).name, []).append(item)
    for i, (revision, pieces, path) in enumerate(zip(revisions, rendered, files, strict=True)):
        own = ignores[revision.path]
        found = _findings(by_file.get(path.name, []), pieces, rules, own)
        if i in unrendered:
            found = _unrendered(unrendered[i], rules, own) + found
        result.revisions.append(RevisionLint(revision, "".join(p.text for p in pieces), found))
        silenced = {f.rule for f in found if f.severity == "ignored"}
        for rule in own:
            reported_as = canonical(rule)
            if not silenced & set(reported_as) and any(
                rules.severity(n) != "off" for n in reported_as
            ):
                result.warnings.append(
                    f"{revision.path.name}: {IGNORE_VARIABLE} silences {rule}, which this "
                    "revision does not trip: remove it"
                )
    return result


def _unrendered(message: str, rules: Rules, ignores: dict[str, str]) -> tuple[LintFinding, ...]:
    severity = rules.severity(OFFLINE_RENDER)
    if severity == "off":
        return ()
    reason = ignores.get(OFFLINE_RENDER)
    return (
        LintFinding(
            rule=OFFLINE_RENDER,
            severity="ignored" if reason else severity,
            message=message,
            help=(
                "lint reads the SQL a revision renders offline (alembic --sql); review this "
                f'one by hand, then say so in it: {IGNORE_VARIABLE} = {{"{OFFLINE_RENDER}": '
                '"<reason>"}'
            ),
            statement="",
            line=0,
            reason=reason,
        ),
    )


def _findings(
    items: list[dict], pieces: list[_Piece], rules: Rules, ignores: dict[str, str]
) -> tuple[LintFinding, ...]:
    # Line of each piece in the file squawk read (squawk's lines are 0-based).
    starts, line = [], 0
    for piece in pieces:
        starts.append(line)
        line += piece.text.count("\n")
    lines = "".join(p.text for p in pieces).splitlines()
    silenced = {name: reason for rule, reason in ignores.items() for name in canonical(rule)}
    found: list[LintFinding] = []
    seen: set[tuple[str, int, str]] = set()
    for item in items:
        rule = str(item.get("rule_name") or "unknown")
        at = int(item.get("line") or 0)
        index = max(i for i, start in enumerate(starts) if start <= at) if starts else 0
        piece = pieces[index] if pieces else _Piece("", True)
        if piece.alembic or rule in rules.satisfied:
            continue  # Alembic's own BEGIN/COMMIT and version table; timeouts the pipeline sets
        severity = rules.severity(rule)
        if severity == "off":
            continue
        reason = silenced.get(rule)
        statement = piece.text.strip()
        key = (rule, index, str(item.get("message")))
        if key in seen:
            continue
        seen.add(key)
        found.append(
            LintFinding(
                rule=rule,
                severity="ignored" if reason else severity,
                message=_one_line(str(item.get("message") or "")) or "",
                help=_one_line(item.get("help")),
                statement=statement,
                line=at + 1,
                excerpt=lines[at].strip() if 0 <= at < len(lines) else "",
                reason=reason,
            )
        )
    return tuple(found)


def lint(
    project: MigrationProject,
    environment: str,
    schemas: list[str] | None = None,
    *,
    all_revisions: bool = False,
) -> LintResult:
    """Lint the revisions ``environment`` has not applied yet (its database is read for
    that), or every revision with ``all_revisions`` (no database needed)."""
    require_squawk()  # before connecting: a missing linter is one line, nothing else
    if all_revisions:
        selected = engine.select_schemas(project, schemas)
        revisions = [r for schema in selected for r in project.revisions(schema)]
    else:
        ahead: list[str] = []
        states = engine.status(project, environment, schemas, warnings=ahead)
        if ahead:  # a revision no file defines: what is pending cannot be told (as plan)
            raise ConfigurationError(ahead[0])
        revisions = [r for st in states for r in st.pending]
    return lint_revisions(project, environment, revisions, all_revisions=all_revisions)


# --- the gate: an upgrade refused before any SQL runs ----------------------------------------


class LintRefused(MigrationError):
    """An upgrade refused before any SQL ran: a revision it would apply has a finding that
    the environment's rules make an error (exit 1, like ``migrate lint``). The message's
    first line is the first such finding."""

    def __init__(self, result: LintResult):
        self.result = result
        super().__init__(refusal(result))


def finding_line(revision: Revision, finding: LintFinding) -> str:
    """One finding on one line: where, which rule, what squawk says, and the statement."""
    statement = " ".join((finding.excerpt or finding.statement).split())
    return (
        f"{revision.schema} {revision.revision} ({revision.path.name}): {finding.rule}: "
        f"{finding.message}" + (f" (statement: {statement})" if statement else "")
    )


def refusal(result: LintResult) -> str:
    errors = result.findings("error")
    env = result.environment
    lines = [finding_line(r, f) for r, f in errors]
    lines.append(
        f"{env}: upgrade refused by lint before any SQL ran: {len(errors)} finding(s) that "
        f"{env}'s [lint] rules make errors (`migrate lint --env {env}` lists them; a "
        f'revision silences a rule for itself with squawk_ignore = {{"<rule>": "<reason>"}}, '
        f"migrate.toml [lint.environments.{env}] changes its level)"
    )
    return "\n".join(lines)


def may_refuse(project: MigrationProject, environment: str) -> bool:
    """Whether any rule can be an error in ``environment``: when none can, the gate lints
    nothing (no squawk run, no database read) and shows nothing."""
    rules = rules_for(project, environment)
    if rules.default == "error":
        return True
    return any(s == "error" for n, s in rules.named.items() if n not in rules.satisfied)


def to_apply(
    project: MigrationProject, applied: set[str], targets: Sequence[str]
) -> list[Revision]:
    """The revisions an upgrade to ``targets`` (revision ids, or ``heads``) applies in a
    database where ``applied`` are: the targets and everything below them (down_revision
    and depends_on), not yet applied, in dependency order."""
    if "heads" in targets:
        targets = [h for s in project.schemas if (h := project.head(s)) is not None]
    wanted = project.applied(list(targets)) - applied
    return [r for s in project.schemas for r in project.revisions(s) if r.revision in wanted]


def gate(
    project: MigrationProject, environment: str, applied: set[str], targets: Sequence[str]
) -> LintResult | None:
    """Lint what an upgrade to ``targets`` would apply under ``environment``'s rules;
    raise LintRefused when a finding is an error there. None when nothing was linted (no
    rule of the environment is an error, or nothing to apply)."""
    if not may_refuse(project, environment):
        return None
    revisions = to_apply(project, applied, targets)
    if not revisions:
        return None
    # A fleet upgrades many databases with the same pending files: lint them once. The key
    # holds what the result depends on: the rules as read now and each file's content.
    key = (
        str(project.settings.alembic_ini),
        repr(rules_for(project, environment)),
        tuple((r.revision, r.checksum) for r in revisions),
    )
    result = _GATED.get(key)
    if result is None:
        result = lint_revisions(project, environment, revisions)
        if len(_GATED) >= 64:
            _GATED.clear()
        _GATED[key] = result
    if not result.ok:
        raise LintRefused(result)
    return result


_GATED: dict[tuple, LintResult] = {}


# --- what the audit row keeps ------------------------------------------------------------------


def declared_ignores(revision: Revision) -> dict[str, str] | None:
    """The revision's own squawk_ignore as its audit row keeps it (``squawk_ignore``
    column): {rule: reason}, None when it declares none. A declaration lint would refuse
    (no reason, not a literal dict) is kept as None: lint says so where it runs."""
    return _declared(revision.path, revision.checksum)


@functools.lru_cache(maxsize=4096)
def _declared(path: Path, checksum: str) -> dict[str, str] | None:
    # Keyed by checksum: a file is read once per content, whatever the number of steps.
    try:
        if IGNORE_VARIABLE.encode() not in path.read_bytes():
            return None  # most revisions: no parse at all
        found = read_ignores(path)
    except (OSError, ConfigurationError):
        return None
    return {audit.printable(k): audit.printable(v) for k, v in found.items()} or None
