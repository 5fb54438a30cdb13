#!/usr/bin/env bash
# `make ray-test`: the Ray Serve application on a local two-node Ray cluster, in private network and process
# namespaces: two replicas behind Ray's proxy answer /score and /next-word exactly as the service run directly
# does, keep answering after one node's processes are killed, and answer what is in flight when the
# application is deleted (docs/ray.md, "Test").
#
#   deploy/ray/test-cluster.sh          # PY=.venv/bin/python by default; installs the `ray` extra if missing
#
# Everything runs inside `unshare --net --pid`: the network holds only loopback (Ray binds the machine's
# external address otherwise, even when told 127.0.0.1), so fixed ports cannot meet anyone else's, and
# `ray stop` sees only this test's processes; when the test ends, the kernel ends every process left in the
# namespace. Needs root (or user namespaces) for unshare. Small on purpose: models/ptb-small, 1 CPU per node,
# 100 MB object stores, a handful of requests, and a hard time limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LIMIT_S=${RAY_TEST_LIMIT_S:-600}

if [ -z "${RAY_TEST_IN_NAMESPACE:-}" ]; then
    "$PY" -c 'import ray.serve' 2>/dev/null || { echo "installing the ray extra"; "$PY" -m pip install -q -e '.[ray]'; }
    "$PY" -m pytest -q -p no:cacheprovider tests/ray  # the application's configuration, no cluster needed
    command -v ip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }
    # The work directory is made and removed out here: once the namespace's processes are gone (all of them
    # end with it), nothing writes there any more, also after a timeout or a failure.
    RAY_TEST_WORK=$(mktemp -d /tmp/rayt.XXXXXX)  # short: Ray's socket paths must stay under 108 bytes
    export RAY_TEST_IN_NAMESPACE=1 RAY_TEST_WORK PY
    rc=0
    timeout -k 10 "$LIMIT_S" unshare --net --pid --fork --mount --mount-proc "$0" || rc=$?
    rm -rf "$RAY_TEST_WORK"
    exit "$rc"
fi

# --- inside the namespaces ------------------------------------------------------------------------------
ip link set lo up
BIN=$(dirname "$PY")
export PATH="$BIN:$PATH" RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
# A busy 2-core machine starts a node's processes far slower than Ray allows by default (60 s for the raylet
# to register, less for its agents to write their ports): a raylet that gives up crashes.
export RAY_raylet_start_wait_time_s=300 RAY_agent_register_timeout_ms=300000
WORK=$RAY_TEST_WORK
# Token authentication on, with a token of this test's own, for every process (both nodes, the drivers,
# `serve run`). Left to itself Ray 2.60 decides per command: `ray start --head` turns token authentication on
# when ~/.ray/auth_token exists (any local `ray.init()` writes one), while `ray start --address` and
# `ray.init(address=...)` do not, so the second node reached the head without a token and was refused
# (InvalidAuthToken). Setting the mode and the token here makes both sides agree, whatever $HOME holds.
unset RAY_AUTH_TOKEN
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$WORK/auth_token"
"$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH"
HEAD=127.0.0.1:6379
SERVE_PORT=8000
DIRECT_PORT=8001
MODEL=$PWD/models/ptb-small
direct_pid=

cleanup() {
    local rc=$?
    if [ "$rc" != 0 ]; then  # what Ray said, before its files go
        for f in "$WORK"/ray/session_latest/logs/{gcs_server,raylet,serve/controller_*,serve/replica_*}.{out,err,log}; do
            [ -s "$f" ] && { echo "--- $f"; grep -m 5 -E '^\[[^]]* [CE] ' "$f"; tail -5 "$f"; }
        done
    fi
    ray stop --force >/dev/null 2>&1 || true
    [ -n "$direct_pid" ] && kill "$direct_pid" 2>/dev/null || true
}
trap cleanup EXIT

log() { printf '\n== %s\n' "$*"; }
wait_http() {  # wait_http URL SECONDS
    for _ in $(seq 1 "$2"); do
        [ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$1")" = 200 ] && return 0
        sleep 1
    done
    echo "no 200 from $1 after $2 s"
    return 1
}
node() {  # node NAME ARGS...: one Ray node of 1 CPU with its own ports (both nodes share this address)
    local name=$1
    shift
    ray start --node-ip-address 127.0.0.1 --num-cpus 1 --object-store-memory 100000000 \
        --disable-usage-stats "$@" >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; return 1; }
}

log "two Ray nodes on loopback"
# Every port fixed: the namespace is private, and two nodes on one address must not pick the same one.
node head --head --port "${HEAD#*:}" --include-dashboard false --temp-dir "$WORK/ray" \
    --node-manager-port 6380 --object-manager-port 6381 --min-worker-port 20000 --max-worker-port 20999 \
    --dashboard-agent-listen-port 52365 --dashboard-agent-grpc-port 52366 --runtime-env-agent-port 52367 \
    --metrics-export-port 52368
node second --address "$HEAD" \
    --node-manager-port 6390 --object-manager-port 6391 --min-worker-port 21000 --max-worker-port 21999 \
    --dashboard-agent-listen-port 52375 --dashboard-agent-grpc-port 52376 --runtime-env-agent-port 52377 \
    --metrics-export-port 52378
"$PY" - "$HEAD" <<'EOF'
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
nodes = [n for n in ray.nodes() if n["Alive"]]
print(f"{len(nodes)} nodes alive, {sum(n['Resources'].get('CPU', 0) for n in nodes):g} CPUs")
assert len(nodes) == 2
EOF

log "the service run directly, for comparison"
LMSERVE_THREADS=1 "$PY" -m service --model "$MODEL" --port "$DIRECT_PORT" >"$WORK/direct.log" 2>&1 &
direct_pid=$!

log "serve run: two replicas, one per node, behind the proxy on the head node"
cat >"$WORK/serve.yaml" <<EOF
proxy_location: HeadOnly
http_options: {host: 127.0.0.1, port: $SERVE_PORT}
applications:
  - name: lmserve
    route_prefix: /
    import_path: lmserve_ray:build
    runtime_env: {working_dir: "local://$PWD/deploy/ray"}
    args:
      num_replicas: 2
      num_cpus: 1
      settings: {model: $MODEL, threads: 1}
EOF
serve run --address "$HEAD" --non-blocking "$WORK/serve.yaml" >"$WORK/serve-run.log" 2>&1 \
    || { cat "$WORK/serve-run.log"; exit 1; }
wait_http "http://127.0.0.1:$SERVE_PORT/readyz" 180 || { cat "$WORK/serve-run.log"; serve status --address "$HEAD"; exit 1; }
wait_http "http://127.0.0.1:$DIRECT_PORT/readyz" 120 || { cat "$WORK/direct.log"; exit 1; }

"$PY" deploy/ray/check_cluster.py --ray "$HEAD" --serve "http://127.0.0.1:$SERVE_PORT" \
    --direct "http://127.0.0.1:$DIRECT_PORT" --second-node-port 6390
