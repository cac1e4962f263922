#!/usr/bin/env bash
# Install, then run the test suite against a real PostgreSQL: $TEST_DATABASE_URL, else
# 127.0.0.1:5432 when it answers, else an embedded server. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pytest "$@"
