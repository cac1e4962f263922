#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the project with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install: needs Python 3.11 or newer as '$python' (set PYTHON=...)" >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The distribution was called alembic-dagster-pipeline (package `orchestration`) before it
# became dagster-alembic (package dagster_alembic): drop the old one from an existing .venv.
if .venv/bin/python -m pip show --quiet alembic-dagster-pipeline >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --quiet --yes alembic-dagster-pipeline
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
