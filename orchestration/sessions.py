"""The engine's sessions: how they connect (timeouts from the first statement), the one
lock a migration holds per database, Ctrl-C that reaches the server, errors as text."""

from __future__ import annotations

import getpass
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from dagster_alembic import audit
from dagster_alembic.errors import ERROR_LIMIT, MigrationError, driver_error_line
from dagster_alembic.settings import EnvironmentSettings
from dagster_alembic.urls import redact

# One advisory lock key for "a migration runs on this database" (63 bits, stable).
# From the project's first name (alembic-dagster-pipeline): kept, so releases before and
# after the rename take the same lock.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"alembic-dagster-pipeline").digest()[:8], "big") >> 1
_ERROR_LIMIT = ERROR_LIMIT


def application_name(environment: str) -> str:
    """What pg_stat_activity shows for our connections, so a lock holder can be named."""
    return f"migrate:{environment}:{getpass.getuser()}@{socket.gethostname()}"[:63]


def session_options(env: EnvironmentSettings) -> str:
    """libpq ``options`` that give every session the environment's timeouts from its
    first statement on: verify, pre-checks and failure rows included, not only steps."""
    settings = {"lock_timeout": env.lock_timeout, "statement_timeout": env.statement_timeout}
    return " ".join(
        f"-c {name}={value.replace(' ', chr(92) + ' ')}" for name, value in settings.items()
    )


def create_engine(
    url: URL, environment: str, env_settings: EnvironmentSettings | None = None
) -> sa.Engine:
    """An engine for one run: no pool, so session settings never outlive the run."""
    connect_args: dict[str, Any] = {
        "application_name": application_name(environment),
        "connect_timeout": 10,
    }
    if env_settings is not None:
        connect_args["options"] = session_options(env_settings)
    return sa.create_engine(url, poolclass=sa.NullPool, connect_args=connect_args)


def error_text(exc: BaseException, url: URL | None = None) -> str:
    """One readable line (or a few) for an exception, with no password in it."""
    if not isinstance(exc, Exception):  # KeyboardInterrupt, a terminated Dagster run
        return (
            f"interrupted ({type(exc).__name__}): the running statement was cancelled "
            "and the step rolled back"
        )
    return audit.printable(redact(driver_error_line(exc), url))[:_ERROR_LIMIT]


# --- one runner per database -------------------------------------------------------------


@contextmanager
def advisory_lock(conn: sa.Connection, wait_seconds: float, *, in_transaction: bool = False):
    """Hold the migration lock in the session of ``conn``, the migration's own connection.

    A session-level lock outlives each step's commit, and goes with the session when the
    runner dies. Waiters poll pg_try_advisory_lock, each try a transaction that ends at
    once, instead of blocking in pg_advisory_lock: a blocked statement holds a snapshot,
    and CREATE INDEX CONCURRENTLY in the holder's migration waits for every older
    snapshot in the database, so blocked waiters and the holder would wait on each other
    until lock_timeout.

    ``in_transaction``: the caller's transaction (or a rehearsal) holds the run. The lock
    is then transaction-level: it ends with that transaction, never outlives it on a
    pooled connection, and no try commits or rolls back the caller's work. Locks are
    re-entrant within a session, so a command that holds the lock can run Alembic, whose
    env.py takes it again.
    """
    function = "pg_try_advisory_xact_lock" if in_transaction else "pg_try_advisory_lock"
    deadline = time.monotonic() + wait_seconds
    pause = 0.05
    while True:
        got = conn.scalar(sa.text(f"SELECT {function}(:k)"), {"k": LOCK_KEY})
        if got:
            if not in_transaction:
                conn.commit()
            break
        if time.monotonic() >= deadline:
            holder = lock_holder(conn)
            if not in_transaction:
                conn.rollback()
            raise MigrationError(
                f"another migration holds the lock on this database ({holder}); "
                f"gave up after {wait_seconds:g}s"
            )
        if not in_transaction:
            conn.rollback()
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    try:
        yield
    finally:
        if not in_transaction:
            release_lock(conn)


def release_lock(conn: sa.Connection) -> None:
    """Release one hold of the session-level lock (a failed step may have left a
    transaction to end first); a session that is gone took its lock with it."""
    try:
        conn.rollback()
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        conn.commit()
    except sa.exc.SQLAlchemyError:
        pass


def lock_holder(conn: sa.Connection) -> str:
    row = conn.execute(
        sa.text(
            """
            SELECT a.pid, a.application_name, a.usename, a.backend_start
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = :hi AND l.objid::bigint = :lo
            """
        ),
        {"hi": LOCK_KEY >> 32, "lo": LOCK_KEY & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "holder unknown, it may have just finished"
    since = row.backend_start.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return f"held by pid {row.pid} {row.application_name or '?'} as {row.usename}, since {since}"


# --- interrupts: Ctrl-C and a terminated run cancel the running statement ---------------


@contextmanager
def cancel_on_interrupt(connection: sa.Connection) -> Iterator[None]:
    """Cancel the running statement on the server as soon as SIGINT or SIGTERM arrives.

    psycopg2 blocks in C until a statement returns, and Python runs signal handlers only
    between bytecodes: Ctrl-C (or Dagster's SIGINT to a run it terminates) would wait for
    a pg_sleep or a long DDL to finish. Python's C-level handler writes each signal to the
    wakeup fd even then; a thread reading it cancels the statement (psycopg2's cancel()
    is meant to be called from another thread), the server rolls it back, and the
    interrupt is raised once control is back in Python. (A psycopg2 wait callback would
    do the same but turns COPY off for revisions.) Outside the main thread Python takes
    no wakeup fd: there, no early cancel.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    stop = threading.Event()

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if stop.is_set():
                return
            if signal.SIGINT in data or signal.SIGTERM in data:
                dbapi = connection.connection.dbapi_connection
                with suppress(Exception):  # no statement, or the connection is gone
                    dbapi.cancel()  # type: ignore[union-attr]
            if previous >= 0:  # whoever had the wakeup fd (an event loop) still hears it
                with suppress(OSError):
                    os.write(previous, data)

    watcher = threading.Thread(target=watch, name="migrate-cancel-on-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        stop.set()
        os.write(write_fd, b"\0")
        watcher.join()
        os.close(read_fd)
        os.close(write_fd)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """While the record of an interrupted step is written: further SIGINT/SIGTERM are
    taken note of, not raised (a user pressing Ctrl-C three times would otherwise lose the
    failure row to the second). The interrupt already on its way is raised by the caller."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: None)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
