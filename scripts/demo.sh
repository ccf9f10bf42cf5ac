#!/usr/bin/env bash
# Run the demo app under gunicorn on http://127.0.0.1:${PORT:-8000}.
# Without DRAGONFLY_ADDRESSES it starts a private, non-persistent redis-server on a free
# 127.0.0.1 port and stops it on exit. WORKERS (default 2) sets the gunicorn worker count;
# CACHE_ADMIN_TOKEN is generated (and printed) when not set. It prints the
# `export DRAGONFLY_ADDRESSES=...` line that points the README's examples and the CLI at
# this demo's server.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh demo

export PORT=${PORT:-8000}
if ! .venv/bin/python -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$PORT" 2>/dev/null; then
    echo "demo: port $PORT on 127.0.0.1 is in use; pick another: PORT=8001 ./scripts/demo.sh" >&2
    exit 1
fi

redis_pid=""
scratch=$(mktemp -d)
cleanup() {
    if [[ -n "$redis_pid" ]]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

if [[ -z "${DRAGONFLY_ADDRESSES:-}" ]]; then
    redis_bin=${REDIS_SERVER_BIN:-$(command -v redis-server || echo /usr/bin/redis-server)}
    redis_port=$(.venv/bin/python -c \
        'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
        2>/dev/null || echo 6390)
    mkdir -p "$scratch/redis"
    "$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no --protected-mode no --dir "$scratch/redis" \
        >"$scratch/redis/redis.log" 2>&1 &
    redis_pid=$!
    ready=""
    for _ in $(seq 50); do
        if .venv/bin/python -c "import redis; redis.Redis(port=$redis_port, socket_timeout=0.2).ping()" \
            >/dev/null 2>&1; then
            ready=1
            break
        fi
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "$ready" ]]; then
        echo "demo: redis-server did not start on 127.0.0.1:$redis_port:" >&2
        cat "$scratch/redis/redis.log" >&2
        exit 1
    fi
    export DRAGONFLY_ADDRESSES="127.0.0.1:$redis_port"
    echo "demo: private redis-server on $DRAGONFLY_ADDRESSES (discarded on exit)"
fi

token_shown='$CACHE_ADMIN_TOKEN'  # yours: not printed
if [[ -z "${CACHE_ADMIN_TOKEN:-}" ]]; then
    CACHE_ADMIN_TOKEN=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')
    export CACHE_ADMIN_TOKEN
    token_shown=$CACHE_ADMIN_TOKEN
    echo "demo: generated CACHE_ADMIN_TOKEN for this run: $CACHE_ADMIN_TOKEN"
fi
export WEB_CONCURRENCY=${WORKERS:-${WEB_CONCURRENCY:-2}}
export DEMO_DB_PATH=${DEMO_DB_PATH:-$scratch/demo.sqlite3}
# This run's own Prometheus files and gunicorn control socket, gone with $scratch on exit.
[[ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]] || export PROMETHEUS_MULTIPROC_DIR=$scratch/prometheus
export GUNICORN_CONTROL_SOCKET=${GUNICORN_CONTROL_SOCKET:-$scratch/gunicorn.ctl}

url="http://127.0.0.1:$PORT"
cat <<MSG
demo: gunicorn with $WEB_CONCURRENCY workers on $url  (Ctrl-C to stop)
  health   curl $url/api/v1/health/cache
  stats    curl -H "Authorization: Bearer $token_shown" $url/api/v1/admin/cache/stats
  metrics  curl $url/metrics
  demo     curl $url/demo/items/1      (first read: a 50 ms "query"; then cached)
           curl -X PUT -H 'Content-Type: application/json' -d '{"name": "new"}' $url/demo/items/1
The cache server, for the README's examples and the CLI (in another terminal):
  export DRAGONFLY_ADDRESSES=$DRAGONFLY_ADDRESSES
  .venv/bin/dragonfly-cache ping            (or: source .venv/bin/activate; dragonfly-cache ping)
MSG
# gunicorn reads ./gunicorn.conf.py: workers, bind and Prometheus multiprocess mode.
.venv/bin/gunicorn wsgi:app
