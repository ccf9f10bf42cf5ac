#!/usr/bin/env bash
# Run the demo app under gunicorn on http://127.0.0.1:${PORT:-8000}.
# Without DRAGONFLY_ADDRESSES it starts a private, non-persistent redis-server on a free
# 127.0.0.1 port and stops it on exit. WORKERS (default 2) sets the gunicorn worker count.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh

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

url="http://127.0.0.1:${PORT:-8000}"
cat <<MSG
demo: serving $url  (Ctrl-C to stop)
  curl $url/api/v1/health/cache
  curl -X PUT --data 'hello' $url/demo/greeting
  curl $url/demo/greeting
MSG
.venv/bin/gunicorn --bind "127.0.0.1:${PORT:-8000}" --workers "${WORKERS:-2}" wsgi:app
