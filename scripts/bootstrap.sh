#!/usr/bin/env bash
# Make this checkout ready to test and run: .venv with the package and its test extras,
# and a redis-server binary for the integration tests. Idempotent; a no-op run takes well
# under a second. Runs on a fresh Debian with only Python >= 3.10 (as root it installs
# what is missing with apt-get; as another user it says what to install).
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

# --- package + test extras (re-installed only when the metadata changed) ------------------
if [[ ! -f .venv/.stamp || pyproject.toml -nt .venv/.stamp \
      || ( -f setup.cfg && setup.cfg -nt .venv/.stamp ) ]]; then
    say "installing the package and its [test] extras into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.stamp
fi

# --- redis-server for the integration tests -----------------------------------------------
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
