#!/usr/bin/env bash
# Make this checkout ready for one purpose: .venv with the package and the extras that
# purpose needs, and a redis-server binary (the tests start private ones; so does the demo).
#
#   bash scripts/bootstrap.sh [test]   # -e '.[test]': every extra, pytest, ruff, mypy, docs
#   bash scripts/bootstrap.sh demo     # -e '.[server]': Flask, prometheus-flask-exporter, gunicorn
#
# Idempotent; a no-op run takes well under a second. Each purpose has its own stamp, so
# running the demo and then the tests installs the test extras (the test stamp covers the
# demo: [test] includes [server]). Runs on a fresh Debian with only Python >= 3.10 (as root
# it installs what is missing with apt-get; as another user it says what to install).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
is_root() { [[ "$(id -u)" == 0 ]]; }

apt_install() {
    say "apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- what to install: the extras, and the stamps that say they are there ------------------
purpose=${1:-test}
case "$purpose" in
    test) extras=test; covered_by=(test) ;;
    demo) extras=server; covered_by=(demo test) ;;  # [test] includes [server]
    *) die "unknown purpose '$purpose' (usage: bootstrap.sh [test|demo])" ;;
esac

# --- Python -------------------------------------------------------------------------------
python=""
for candidate in ${PYTHON:-} python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
[[ -n "$python" ]] || die "need Python >= 3.10 (python3.11 or python3 on PATH, or set PYTHON=...)"

# --- virtualenv ---------------------------------------------------------------------------
if ! .venv/bin/python -c '' >/dev/null 2>&1; then
    rm -rf .venv
    say "creating .venv with $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    if ! "$python" -m venv .venv; then
        # Debian splits venv/ensurepip into python3-venv; a failed run leaves a venv without pip.
        rm -rf .venv
        is_root || die "'$python -m venv' failed; install python3-venv (sudo apt-get install python3-venv)"
        version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install python3-venv "python${version}-venv" || apt_install python3-venv
        "$python" -m venv .venv
    fi
fi

# --- package + extras (re-installed only when the metadata changed) -----------------------
fresh() {  # fresh STAMP: the stamp exists and is newer than the packaging metadata
    [[ -f "$1" && ! pyproject.toml -nt "$1" && ! ( -f setup.cfg && setup.cfg -nt "$1" ) ]]
}
ready=""
for stamp in "${covered_by[@]}"; do
    if fresh ".venv/.stamp-$stamp"; then
        ready=1
        break
    fi
done
if [[ -z "$ready" ]]; then
    # pip is quiet (-q) and a first install downloads for a while: say so before it starts.
    say "installing the package with its [$extras] extras into .venv for $purpose" \
        "(the first time takes a minute or so)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
    touch ".venv/.stamp-$purpose"
    say "done: .venv is ready for $purpose"
fi

# --- redis-server: the tests start private ones, and so does the demo ---------------------
if [[ -n "${REDIS_SERVER_BIN:-}" ]]; then
    [[ -x "$REDIS_SERVER_BIN" ]] || die "REDIS_SERVER_BIN=$REDIS_SERVER_BIN is not an executable file"
elif command -v redis-server >/dev/null 2>&1 \
    || [[ -x /usr/bin/redis-server || -x /usr/local/bin/redis-server ]]; then
    :
elif is_root; then
    apt_install redis-server
    # The package may start a system server on 6379; ours use private ports, so stop it.
    { service redis-server stop || true; } >/dev/null 2>&1
    { update-rc.d redis-server disable || true; } >/dev/null 2>&1
    { systemctl disable --now redis-server || true; } >/dev/null 2>&1
    command -v redis-server >/dev/null 2>&1 || die "apt-get installed redis-server but it is not on PATH"
else
    die "redis-server is needed by the integration tests and is not installed.
  Install it:  sudo apt-get install redis-server
  or build/obtain one and set REDIS_SERVER_BIN=/path/to/redis-server"
fi
