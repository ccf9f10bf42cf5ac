#!/usr/bin/env bash
# Run pytest on the given tests N times in a row and stop at the first failure: a check
# that a green run is not luck. Usage: scripts/repeat.sh N [pytest args...]
#   scripts/repeat.sh 50 tests/test_contract.py
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:?usage: scripts/repeat.sh N [pytest args...]}
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$(date +%s)
for i in $(seq 1 "$runs"); do
    begun=$(date +%s)
    if ! .venv/bin/python -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1; then
        echo "run $i of $runs FAILED:"
        tail -40 "$log"
        exit 1
    fi
    echo "run $i ok: $(tail -1 "$log") ($(( $(date +%s) - begun )) s)"
done
echo "$runs/$runs passed in $(( $(date +%s) - started )) s"
