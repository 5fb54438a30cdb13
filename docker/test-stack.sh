#!/usr/bin/env bash
# `make docker-test`: build the images, bring the compose stack up, wait until healthy, run the integration
# tests against it, check Prometheus scrapes it, then the scale-out stack (3 replicas behind nginx): requests
# spread across the replicas, and under steady load it is scaled 3 -> 4 -> 2 with not one request failing and
# the new replica getting its share. Every stack is torn down, pass or fail.
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

# --- scale-out: replicas behind nginx, scaled 3 -> 4 -> 2 under load -------------------------------------
SCALE=(-f docker-compose.yml -f docker/compose.scale.yml)
scale() { "${COMPOSE[@]}" "${SCALE[@]}" "$@"; }
replicas() { scale ps -q server | sort; }
replica_url() { echo "http://$("$DOCKER" port "$1" 8000 | head -1)"; }  # each replica has its own host port
served_by() {  # served_by CONTAINER: /score and /next-word requests it answered with 200, from its /metrics
    curl -fsS -m 10 "$(replica_url "$1")/metrics" | "$PY" -c '
import re, sys
pattern = r"lmserve_requests_total\{code=\"200\",endpoint=\"/(?:score|next-word)\"\} (\S+)"
print(int(sum(float(v) for v in re.findall(pattern, sys.stdin.read()))))'
}
served_line() { for id in $(replicas); do printf '%s=%s ' "${id:0:12}" "$(served_by "$id")"; done; echo; }

log "scale-out: 3 replicas behind nginx"
export LMSERVE_PUBLISH=127.0.0.1: LB_PUBLISH=127.0.0.1:$LB_PORT PROMETHEUS_PUBLISH=127.0.0.1: LMSERVE_DRAIN_S=3
scale up -d --scale server=3 server lb
for id in $(replicas); do wait_ready "$(replica_url "$id")/readyz" 600 || { scale logs; exit 1; }; done
wait_ready "http://127.0.0.1:$LB_PORT/readyz" 60 || { scale logs; exit 1; }
# Each replica answers one request and refuses one, so that its /metrics has every labelled family: the
# integration tests' metrics check lands on whichever replica nginx picks.
for id in $(replicas); do
    curl -fsS -o /dev/null -H 'content-type: application/json' -d '{"text": "warm up"}' "$(replica_url "$id")/score"
    curl -sS -o /dev/null -H 'content-type: application/json' -d '{"text": 5}' "$(replica_url "$id")/score"
done
PYTHON="$PY" tests/integration/run.sh "http://127.0.0.1:$LB_PORT"
for i in $(seq 1 60); do
    curl -fsS -o /dev/null -H 'content-type: application/json' -d "{\"text\": \"request $i\"}" \
        "http://127.0.0.1:$LB_PORT/score"
done
served=()
for id in $(replicas); do served+=("$(served_by "$id")"); done
echo "/score and /next-word requests served by each replica: ${served[*]}"
[ "${#served[@]}" = 3 ]
for n in "${served[@]}"; do [ "$n" -gt 0 ]; done

# Steady traffic through nginx while a replica is added (nginx must find it within seconds and send it its
# share) and two are taken away (each drains; nginx retries elsewhere what a stopping replica refuses):
# not one request may fail.
LOAD_OUT=$(mktemp)
"$PY" docker/steady_load.py "http://127.0.0.1:$LB_PORT" --clients 4 --out "$LOAD_OUT" &
load_pid=$!
trap 'kill -INT $load_pid 2>/dev/null || true; down; down "${SCALE[@]}"' EXIT
sleep 5

log "scale 3 -> 4 under load"
before=$(replicas)
scale up -d --no-recreate --scale server=4 server
new=$(comm -13 <(echo "$before") <(replicas))
[ -n "$new" ] || { echo "no new replica"; exit 1; }
wait_ready "$(replica_url "$new")/readyz" 600 || { scale logs server; exit 1; }
sleep 10
echo "served per replica after 10 s with 4: $(served_line)"
new_served=$(served_by "$new")
echo "the new replica ${new:0:12} answered $new_served requests"
[ "$new_served" -gt 0 ]

log "scale 4 -> 2 under load"
scale up -d --no-recreate --scale server=2 server
[ "$(replicas | wc -l)" = 2 ]
sleep 5
echo "served per replica, the 2 left: $(served_line)"

kill -INT "$load_pid"
wait "$load_pid"
"$PY" - "$LOAD_OUT" <<'PYEOF'
import json, sys
result = json.load(open(sys.argv[1]))
answered = result["answers"].get("200", 0)
print(f"under load, 3 -> 4 -> 2 replicas: {answered} answered with 200, {result['failed']} failed")
for line in result["first_failures"]:
    print("  failed:", line)
assert answered > 0 and result["failed"] == 0, result
PYEOF
rm -f "$LOAD_OUT"
echo "requests per replica address over the whole run (nginx's access log):"
scale logs --no-color lb | grep -o 'upstream=[0-9.:, ]*' | sort | uniq -c | sort -rn | head -10
down "${SCALE[@]}"
log "docker-test passed"
