#!/usr/bin/env bash
# Integration tests against a running server, with curl (and python3 for the JSON checks).
#
#   tests/integration/run.sh http://127.0.0.1:8000
#
# EXPECT_429=1 adds the overload check: the server must have a small queue (LMSERVE_MAX_QUEUE=40) so that a
# burst of 32-sentence requests gets some 429s, and nothing but 200s and 429s.
set -uo pipefail

BASE=${1:-http://127.0.0.1:8000}
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok    $1"; }
bad() { failed=$((failed + 1)); echo "FAIL  $1"; [ -s "$TMP/body" ] && head -c 600 "$TMP/body" && echo; }

# request METHOD PATH [JSON]: writes the body to $TMP/body, headers to $TMP/headers, prints the status code.
request() {
    local method=$1 path=$2 data=${3:-}
    if [ -n "$data" ]; then
        curl -sS -m 30 -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' -X "$method" \
            -H 'content-type: application/json' --data-binary "$data" "$BASE$path"
    else
        curl -sS -m 30 -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' -X "$method" "$BASE$path"
    fi
}

# check NAME EXPECTED_CODE PYTHON_ASSERTIONS METHOD PATH [JSON]; `d` is the parsed body in the assertions.
check() {
    local name=$1 want=$2 code=$3
    shift 3
    local got
    got=$(request "$@")
    if [ "$got" != "$want" ]; then
        bad "$name (HTTP $got, expected $want)"
        return
    fi
    if "$PY" - "$TMP/body" "$code" <<'PYEOF'; then ok "$name"; else bad "$name"; fi
import json, math, sys
body = open(sys.argv[1], "rb").read()
try:
    d = json.loads(body)
except ValueError:
    d = body.decode("utf-8", "replace")
try:
    exec(sys.argv[2])
except AssertionError as e:
    print("      assertion failed:", str(e)[:300])
    sys.exit(1)
PYEOF
}

# An error answer: the one JSON envelope, with a code and a message.
ENVELOPE='assert set(d) == {"error"} and set(d["error"]) == {"code", "message", "details", "type", "param"}, d
assert isinstance(d["error"]["message"], str) and d["error"]["message"]'

check "healthz" 200 'assert d == {"status": "ok"}' GET /healthz
check "readyz" 200 'assert d["status"] == "ready"' GET /readyz
check "model card" 200 '
assert d["parameters"] > 0 and d["vocab_size"] == d["config"]["vocab_size"]
assert d["metrics"]["test_ppl"] > 1 and d["device"] and d["dtype"]' GET /model

SENTENCE='The company said profits rose 5% to $30 million.'
check "score: totals consistent" 200 '
r, = d["results"]
assert r["tokens"][-1] == "<eos>" and r["num_tokens"] == len(r["tokens"]) == len(r["token_logprobs"])
assert r["tokens"][:7] == ["the", "company", "said", "profits", "rose", "N", "N"]
assert abs(sum(r["token_logprobs"]) - r["logprob"]) < 1e-3
assert abs(r["log10prob"] - r["logprob"] / math.log(10)) < 1e-6
assert abs(r["perplexity"] - math.exp(-r["logprob"] / r["num_tokens"])) < 1e-6 * r["perplexity"]
assert all(lp <= 0 for lp in r["token_logprobs"]) and r["num_oov"] == len(r["oov"])' \
    POST /score "{\"text\": \"$SENTENCE\", \"per_token\": true}"
single=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["logprob"])' "$TMP/body")

check "score: add_eos false predicts one token less" 200 '
r, = d["results"]
assert r["tokens"][-1] != "<eos>" and r["num_tokens"] == len(r["tokens"])' \
    POST /score "{\"text\": \"$SENTENCE\", \"add_eos\": false}"

BATCH=$("$PY" -c '
import json
base = ["the stock market rose", "mr. smith said the company would buy back N shares", "the dog sang"]
s = [" ".join([base[i % 3]] * (1 + i % 4)) for i in range(31)] + ['"$( printf '%s' "$SENTENCE" | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()))' )"']
print(json.dumps({"sentences": s}))')
check "score: a batch of 32 mixed lengths, same numbers as alone" 200 "
assert len(d['results']) == 32
for r in d['results']:
    assert abs(r['perplexity'] - math.exp(-r['logprob'] / r['num_tokens'])) < 1e-6 * r['perplexity']
assert abs(d['results'][-1]['logprob'] - ($single)) < 1e-3, (d['results'][-1]['logprob'], $single)" \
    POST /score "$BATCH"

check "score: OOV words reported" 200 '
r, = d["results"]
assert "<unk>" in r["tokens"] and r["num_oov"] >= 1 and "xylophonically" in r["oov"]' \
    POST /score '{"text": "the xylophonically market"}'

check "next-word: top-k sorted, ranks, sums below 1, candidates" 200 '
r, = d["results"]
top = r["top_k"]
assert r["tokens"] == ["the", "stock", "market"] and len(top) == 10
assert [w["rank"] for w in top] == list(range(1, 11))
assert all(a["prob"] >= b["prob"] for a, b in zip(top, top[1:]))
assert all(abs(w["prob"] - math.exp(w["logprob"])) < 1e-9 for w in top)
assert 0 < sum(w["prob"] for w in top) < 1
c = {w["word"]: w for w in r["candidates"]}
assert c["zzzz-not-a-word"]["oov"] is True and c["zzzz-not-a-word"]["prob"] is None
ranks = {w["word"]: w["rank"] for w in top}
for word in ("the", "rose"):
    assert c[word]["rank"] == ranks[word] if word in ranks else c[word]["rank"] > 10, (word, c[word])' \
    POST /next-word '{"prefix": "The stock market", "top_k": 10, "candidates": ["rose", "zzzz-not-a-word", "the"]}'

check "next-word: empty prefix is sentence start; prefixes" 200 '
assert [r["tokens"] for r in d["results"]] == [[], ["the"]]
assert all(len(r["top_k"]) == 3 for r in d["results"])' \
    POST /next-word '{"prefixes": ["", "the"], "top_k": 3}'

check "error: malformed JSON" 422 "$ENVELOPE" POST /score '{"text": '
check "error: wrong type" 422 "$ENVELOPE"'
assert d["error"]["code"] == "invalid_request"' POST /score '{"text": 5}'
check "error: neither text nor sentences" 422 "$ENVELOPE" POST /score '{"normalize": true}'
check "error: top_k 10^9 names its limit" 422 "$ENVELOPE"'
assert d["error"]["code"] == "limit_exceeded" and d["error"]["details"]["limit"] == "max_top_k"' \
    POST /next-word '{"prefix": "the", "top_k": 1000000000}'
check "error: top_k 0" 422 "$ENVELOPE" POST /next-word '{"prefix": "the", "top_k": 0}'
check "error: unknown route" 404 "$ENVELOPE" GET /no-such-route
check "error: wrong method" 405 "$ENVELOPE" GET /score

check "metrics: documented names" 200 '
for name in ["lmserve_requests_total", "lmserve_request_duration_seconds_bucket", "lmserve_requests_rejected_total",
             "lmserve_queue_size", "lmserve_queue_wait_seconds_bucket", "lmserve_batch_size_bucket",
             "lmserve_batch_tokens_bucket", "lmserve_batch_inference_duration_seconds_bucket",
             "lmserve_batches_total", "lmserve_tokens_scored_total", "lmserve_oov_tokens_total",
             "lmserve_scored_nll_nats_total", "lmserve_model_info", "process_resident_memory_bytes"]:
    assert "\n" + name in "\n" + d, name' GET /metrics

if [ "${EXPECT_429:-0}" = 1 ]; then
    BIG=$("$PY" -c 'import json; print(json.dumps({"sentences": ["the stock market rose sharply on friday"] * 32}))')
    printf '%s' "$BIG" >"$TMP/big.json"
    seq 1 24 | xargs -P 24 -I{} curl -sS -m 30 -o /dev/null -w '%{http_code} %header{retry-after}\n' \
        -H 'content-type: application/json' \
        --data-binary @"$TMP/big.json" "$BASE/score" >"$TMP/codes" 2>&1
    if "$PY" - "$TMP/codes" <<'PYEOF'; then ok "overload: a burst gets only 200s and 429s, some 429s"; else bad "overload burst"; fi
import collections, sys
lines = [line.split() for line in open(sys.argv[1]).read().splitlines() if line.strip()]
codes = collections.Counter(parts[0] for parts in lines)
print("      burst codes:", dict(codes))
assert set(codes) <= {"200", "429"} and codes["429"] > 0 and codes["200"] > 0
assert all(len(parts) == 2 and parts[1].isdigit() for parts in lines if parts[0] == "429"), "429 without Retry-After"
PYEOF
    check "overload: rejected counted in metrics" 200 '
assert "lmserve_requests_rejected_total{endpoint=\"/score\",reason=\"queue_full\"}" in d' GET /metrics
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
