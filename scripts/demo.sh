#!/usr/bin/env bash
# Run the demo app under gunicorn on http://127.0.0.1:${PORT:-8000}.
# Without DRAGONFLY_ADDRESSES it starts a private, non-persistent redis-server on a free
# 127.0.0.1 port and stops it on exit. WORKERS (default 2) sets the gunicorn worker count;
# CACHE_ADMIN_TOKEN is generated (and printed) when not set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh demo

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

if [[ -z "${CACHE_ADMIN_TOKEN:-}" ]]; then
    CACHE_ADMIN_TOKEN=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')
    export CACHE_ADMIN_TOKEN
    echo "demo: generated CACHE_ADMIN_TOKEN for this run"
fi
export WEB_CONCURRENCY=${WORKERS:-${WEB_CONCURRENCY:-2}}
export PORT=${PORT:-8000}
export DEMO_DB_PATH=${DEMO_DB_PATH:-$scratch/demo.sqlite3}

url="http://127.0.0.1:$PORT"
cat <<MSG
demo: gunicorn with $WEB_CONCURRENCY workers on $url  (Ctrl-C to stop)
  health   curl $url/api/v1/health/cache
  stats    curl -H 'Authorization: Bearer $CACHE_ADMIN_TOKEN' $url/api/v1/admin/cache/stats
  metrics  curl $url/metrics
  demo     curl $url/demo/items/1      (first read: a 50 ms "query"; then cached)
           curl -X PUT -H 'Content-Type: application/json' -d '{"name": "new"}' $url/demo/items/1
MSG
# gunicorn reads ./gunicorn.conf.py: workers, bind and Prometheus multiprocess mode.
.venv/bin/gunicorn wsgi:app
