#!/usr/bin/env bash
# Set up a development environment in .venv: system packages (Graphviz for
# drawing DAGs, Chromium for the browser tests) and maze (distribution maze-dag) with
# the extras the tests and the documentation build need.
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# test: the suite (incl. the packaging test's `build`); docs: the Sphinx site, which tests/test_docs.py builds.
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,ray,docs]' 2>&1 | grep -v "is ignored: it is neither" || true
# The distribution used to be called "maze"; an old editable install of that name would shadow this one.
if .venv/bin/pip show maze >/dev/null 2>&1; then
  .venv/bin/pip uninstall -y -q maze 2>&1 | grep -v "is ignored: it is neither" || true
fi
