#!/usr/bin/env bash
# `make docker-test`: build the images, bring the compose stack up, wait until healthy, run the integration
# tests against it, check Prometheus scrapes it, then the scale-out stack (3 replicas behind nginx) and that
# requests spread across the replicas; every stack is torn down, pass or fail.
#
# Needs a Docker engine and docker-compose (v1) or `docker compose`; base images are pulled, or made by
# docker/airgap/make-base-images.sh where no registry answers; the wheelhouse is docker/airgap/make-wheelhouse.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null; then COMPOSE=(docker-compose); else COMPOSE=(docker compose); fi
DOCKER=${DOCKER:-docker}
PY=${PY:-python3}
PORT=${DOCKER_TEST_PORT:-18080}
PROM_PORT=${DOCKER_TEST_PROM_PORT:-19090}
LB_PORT=${DOCKER_TEST_LB_PORT:-18081}
export COMPOSE_PROJECT_NAME=ptblmtest

log() { printf '\n== %s\n' "$*"; }

wait_ready() {  # wait_ready URL SECONDS
    local url=$1 seconds=$2
    for _ in $(seq 1 "$seconds"); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 1
    done
    echo "not ready after ${seconds}s: $url"
    return 1
}

down() { "${COMPOSE[@]}" "$@" down -v --remove-orphans >/dev/null 2>&1 || true; }

log "base images"
for image in python:3.11-slim prom/prometheus:v2.53.0 nginx:1.27; do
    "$DOCKER" image inspect "$image" >/dev/null 2>&1 || timeout 60 "$DOCKER" pull -q "$image" >/dev/null 2>&1 || true
done
docker/airgap/make-base-images.sh

# Every time: the project's dependencies may have changed since the wheelhouse was made (pip reuses its cache).
log "wheelhouse"
docker/airgap/make-wheelhouse.sh

log "build"
"${COMPOSE[@]}" build server
"$DOCKER" image ls ptb-lm:cpu --format 'ptb-lm:cpu {{.Size}}'

# --- single server + prometheus --------------------------------------------------------------------------
trap 'down; down -f docker-compose.yml -f docker/compose.scale.yml' EXIT
log "stack up"
LMSERVE_PUBLISH=127.0.0.1:$PORT PROMETHEUS_PUBLISH=127.0.0.1:$PROM_PORT LMSERVE_MAX_QUEUE=40 \
    "${COMPOSE[@]}" up -d server prometheus
wait_ready "http://127.0.0.1:$PORT/readyz" 120 || { "${COMPOSE[@]}" logs server; exit 1; }
for _ in $(seq 1 60); do  # compose's own view: the container's HEALTHCHECK passes
    status=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q server)")
    [ "$status" = healthy ] && break
    sleep 1
done
echo "server container: $status"
[ "$status" = healthy ]

log "integration tests against the stack"
PYTHON="$PY" EXPECT_429=1 tests/integration/run.sh "http://127.0.0.1:$PORT"

log "prometheus scrapes the server and has the recording rules"
ok=0
for _ in $(seq 1 40); do
    if curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query?query=lmserve_requests_total" 2>/dev/null \
        | "$PY" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["data"]["result"] else 1)'; then
        ok=1
        break
    fi
    sleep 1
done
[ "$ok" = 1 ] || { echo "prometheus has no lmserve_requests_total"; exit 1; }
curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/rules" | "$PY" -c '
import json, sys
rules = {r["name"] for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]}
need = {"lmserve:requests:rate1m", "lmserve:request_duration_seconds:p99_1m", "lmserve:live_perplexity:5m"}
assert need <= rules, rules
print("rules:", sorted(rules))'

log "graceful stop"
"${COMPOSE[@]}" stop -t 30 server
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$("${COMPOSE[@]}" ps -q server)")
echo "server exit code after SIGTERM: $code"
[ "$code" = 0 ]
down

# --- scale-out: 3 replicas behind nginx -------------------------------------------------------------------
log "scale-out: 3 replicas behind nginx"
SCALE=(-f docker-compose.yml -f docker/compose.scale.yml)
LMSERVE_PUBLISH=127.0.0.1: LB_PUBLISH=127.0.0.1:$LB_PORT PROMETHEUS_PUBLISH=127.0.0.1: \
    "${COMPOSE[@]}" "${SCALE[@]}" up -d --scale server=3 server lb
wait_ready "http://127.0.0.1:$LB_PORT/readyz" 180 || { "${COMPOSE[@]}" "${SCALE[@]}" logs; exit 1; }
PYTHON="$PY" tests/integration/run.sh "http://127.0.0.1:$LB_PORT"
for i in $(seq 1 60); do
    curl -fsS -o /dev/null -H 'content-type: application/json' -d "{\"text\": \"request $i\"}" \
        "http://127.0.0.1:$LB_PORT/score"
done
served=()
for id in $("${COMPOSE[@]}" "${SCALE[@]}" ps -q server); do
    n=$("$DOCKER" exec "$id" python -c '
import re, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8000/metrics").read().decode()
print(int(sum(float(v) for v in re.findall(r"lmserve_requests_total\{code=\"200\",endpoint=\"/score\"\} (\S+)", text))))')
    served+=("$n")
done
echo "/score requests served by each replica: ${served[*]}"
[ "${#served[@]}" = 3 ]
for n in "${served[@]}"; do [ "$n" -gt 0 ]; done
down "${SCALE[@]}"
log "docker-test passed"
