#!/usr/bin/env bash
# The whole test suite: set up, lint and type-check (a few seconds), then run the unit,
# backend, notebook and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Any Ray a test starts stays on loopback, private, and quiet.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
unset RAY_ADDRESS
.venv/bin/ruff check maze tests benchmarks examples
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
