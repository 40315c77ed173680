#!/usr/bin/env bash
# The main job: set up, then run the user guide's workflow patterns, printing
# each run's progress and writing each DAG as SVG into out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/patterns.py --out out "$@"
