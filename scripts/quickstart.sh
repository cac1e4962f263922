#!/usr/bin/env bash
# Install, then run the pipeline on the embedded default (no server, no Docker):
# upgrade every schema in dev, verify them, and print the audit table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/migrate upgrade --env dev
.venv/bin/migrate verify --env dev
.venv/bin/migrate audit --env dev
