#!/usr/bin/env bash
# Build the documentation site into docs/_build/html (open docs/_build/html/index.html).
# Warnings are errors (-W) and every cross reference must resolve (-n); the tutorial
# notebooks are executed during the build. Extra arguments go to sphinx-build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/sphinx-build ] || bash scripts/setup.sh
# A tutorial that uses Ray keeps it on loopback, private, and quiet.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
unset RAY_ADDRESS
exec .venv/bin/sphinx-build -W --keep-going -n -b html docs docs/_build/html "$@"
