#!/usr/bin/env bash
# The project's test command: bootstrap, lint, type-check, then the test suite.
# Arguments go to pytest, e.g. ./scripts/test.sh -m "not server" -x
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "bootstrap"
bash scripts/bootstrap.sh test

step "ruff check"
.venv/bin/ruff check .

step "mypy (package, strict)"
.venv/bin/mypy

step "pytest $*"
.venv/bin/python -m pytest "$@"
