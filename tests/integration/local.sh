#!/usr/bin/env bash
# Starts the service as a user would (python -m service) on a free local port, with a small queue so that the
# overload check can see 429s, runs tests/integration/run.sh against it, and stops it.
#
#   tests/integration/local.sh [MODEL_DIR]        (default models/ptb-cpu; `make integration`)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-models/ptb-cpu}
PY=${PY:-.venv/bin/python}
PORT=${PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG=$(mktemp)

LMSERVE_MAX_QUEUE=40 "$PY" -m service --model "$MODEL" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
    local rc=$?
    kill "$SERVER" 2>/dev/null
    wait "$SERVER" 2>/dev/null || true  # the server's own exit status (143 after SIGTERM) is not the tests'
    rm -f "$LOG"
    exit "$rc"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { echo "the server died:"; cat "$LOG"; exit 1; }
    sleep 0.5
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" || { echo "not ready after 60 s:"; cat "$LOG"; exit 1; }

PYTHON="$PY" EXPECT_429=1 tests/integration/run.sh "http://127.0.0.1:$PORT"
