"""Reliability and security: the API key, request ids, hostile inputs, faults inside one batch, out-of-memory
splitting, a client that goes away, and a bad checkpoint at start."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from service_helpers import assert_envelope, get_metrics, metric, run_service_cli

from lm.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from service.runner import ModelRunner

KEY = "s3cret-key"


# --- API key --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("post", "/score", {"text": "the stock"}), ("post", "/next-word", {"prefix": "the"}), ("get", "/model", None)],
)
def test_protected_routes_need_the_key(serve, method: str, path: str, body) -> None:
    with serve(api_key=KEY) as c:
        call = getattr(c, method)
        kwargs = {"json": body} if body is not None else {}
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": f"Basic {KEY}"},
            {"authorization": KEY},
        ):
            r = call(path, headers=headers, **kwargs)
            assert_envelope(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
        ok = call(path, headers={"authorization": f"Bearer {KEY}"}, **kwargs)
        assert ok.status_code == 200
        # Unauthenticated bad input is refused for the key, before its body is looked at.
        if method == "post":
            assert_envelope(c.post(path, content=b"{not json", headers={"content-type": "application/json"}), 401)
        refused = 5 if method == "post" else 4
        assert (
            metric(get_metrics(c), "lmserve_requests_rejected_total", endpoint=path, reason="unauthorized") == refused
        )


def test_open_routes_stay_open_and_metrics_can_be_closed(serve) -> None:
    with serve(api_key=KEY) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js"):
            assert c.get(path).status_code == 200, path
    with serve(api_key=KEY, metrics_require_key=True) as c:
        assert_envelope(c.get("/metrics"), 401, "unauthorized")
        assert c.get("/metrics", headers={"authorization": f"Bearer {KEY}"}).status_code == 200


# --- request ids ----------------------------------------------------------------------------------------------


def test_request_id_is_echoed_or_made(client, caplog) -> None:
    caplog.set_level("INFO", logger="service.access")
    r = client.post("/score", json={"text": "the stock market"}, headers={"x-request-id": "client-42"})
    assert r.headers["x-request-id"] == "client-42"
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32 and made != "client-42"
    # An unusable id (too long, odd characters) is replaced, not echoed.
    assert client.get("/healthz", headers={"x-request-id": "x" * 500}).headers["x-request-id"] != "x" * 500
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "service.access"]
    line = next(x for x in lines if x["request_id"] == "client-42")
    assert line["route"] == "/score" and line["status"] == 200 and line["duration_ms"] > 0
    assert line["sequences"] == 1 and line["batch_size"] >= 1


# --- hostile inputs -------------------------------------------------------------------------------------------

HOSTILE: dict[str, tuple[dict, int, str]] = {
    # name: (request kwargs for POST /score or /next-word, expected status, expected code)
    "deep JSON": ({"content": b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}"}, 422, "invalid_request"),
    "wrong content type": (
        {"content": b"text=hello", "headers": {"content-type": "text/plain"}},
        422,
        "invalid_request",
    ),
    "form body": ({"data": {"text": "hello"}}, 422, "invalid_request"),
    "NUL character": ({"json": {"text": "the\x00stock"}}, 422, "invalid_request"),
    "invalid UTF-8": ({"content": b'{"text": "\xff\xfe"}', "headers": {"content-type": "application/json"}}, 400, None),
    "huge body (5 MB)": ({"json": {"text": "a " * 2_500_000}}, 413, "limit_exceeded"),
    "10^5 tiny sentences": ({"json": {"sentences": ["a"] * 100_000}}, 422, "limit_exceeded"),
    "one 10^6-character word": ({"json": {"text": "x" * 1_000_000}}, 422, "limit_exceeded"),
    "number as string": ({"json": {"text": "the", "per_token": "true"}}, 422, "invalid_request"),
    "list of numbers": ({"json": {"sentences": [1, 2, 3]}}, 422, "invalid_request"),
    "null text": ({"json": {"text": None}}, 422, "invalid_request"),
    "empty object": ({"json": {}}, 422, "invalid_request"),
    "JSON array body": ({"json": ["the stock"]}, 422, "invalid_request"),
}
HOSTILE_NEXT: dict[str, tuple[dict, int, str]] = {
    "top_k 0": ({"json": {"prefix": "the", "top_k": 0}}, 422, "invalid_request"),
    "top_k -1": ({"json": {"prefix": "the", "top_k": -1}}, 422, "invalid_request"),
    "top_k 10^9": ({"json": {"prefix": "the", "top_k": 10**9}}, 422, "limit_exceeded"),
    "top_k 10^30": ({"json": {"prefix": "the", "top_k": 10**30}}, 422, None),
    "top_k as string": ({"json": {"prefix": "the", "top_k": "5"}}, 422, "invalid_request"),
    "top_k as float": ({"json": {"prefix": "the", "top_k": 5.5}}, 422, "invalid_request"),
    "too many candidates": ({"json": {"prefix": "the", "candidates": ["the"] * 1000}}, 422, "limit_exceeded"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_score_inputs_get_the_right_4xx(serve, name: str) -> None:
    kwargs, status, code = HOSTILE[name]
    with serve() as c:
        assert_envelope(c.post("/score", **kwargs), status, code)
        assert c.post("/score", json={"text": "the stock market"}).status_code == 200  # still up


@pytest.mark.parametrize("name", list(HOSTILE_NEXT))
def test_hostile_next_word_inputs_get_the_right_4xx(client, name: str) -> None:
    kwargs, status, code = HOSTILE_NEXT[name]
    assert_envelope(client.post("/next-word", **kwargs), status, code)
    assert client.post("/next-word", json={"prefix": "the"}).status_code == 200


@pytest.mark.parametrize(
    "text", ["the stock 📈 market 😀", "השוק עלה היום", "مرحبا بالعالم", "the\u202emarket", "tab\tand\nnewline"]
)
def test_emoji_right_to_left_and_control_characters_are_scored_as_oov(client, text: str) -> None:
    r = client.post("/score", json={"text": text, "per_token": True})
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert result["num_tokens"] == len(result["tokens"]) and all(lp < 0 for lp in result["token_logprobs"])


def test_duplicate_and_oov_candidates(client) -> None:
    r = client.post("/next-word", json={"prefix": "the", "candidates": ["stock", "stock", "zzz-nope", "STOCK"]})
    assert r.status_code == 200
    cands = r.json()["results"][0]["candidates"]
    assert [c["word"] for c in cands] == ["stock", "stock", "zzz-nope", "stock"]
    assert cands[0] == cands[1] == cands[3] and cands[2]["oov"] is True and cands[2]["prob"] is None


# --- faults ---------------------------------------------------------------------------------------------------


def test_one_failing_batch_fails_only_its_request_while_concurrent_ones_succeed(serve, service_vocab) -> None:
    poison = service_vocab.stoi["profits"]
    with serve(raise_server_exceptions=False, max_batch_sequences=1, max_wait_ms=0) as c:
        runner = c.app.state.runner
        real = runner.run

        def run(items):
            if any(poison in it.ids for it in items):
                raise RuntimeError("secret internal detail")
            return real(items)

        c.app.state.engine.run_batch = run
        word = service_vocab.itos[poison]
        texts = [f"the {word}" if i == 7 else f"the stock market {i}" for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda t: c.post("/score", json={"text": t}), texts))
    for i, r in enumerate(responses):
        if i == 7:
            body = assert_envelope(r, 500, "internal_error")
            assert "secret" not in json.dumps(body)
        else:
            assert r.status_code == 200, (i, r.text)


def test_out_of_memory_splits_the_batch_and_retries(serve, monkeypatch) -> None:
    calls: list[int] = []
    real = ModelRunner._run

    def small_device(self, items):
        calls.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, items)

    monkeypatch.setattr(ModelRunner, "_run", small_device)
    with serve(max_wait_ms=50) as c:
        alone = c.post("/score", json={"text": "the stock market rose"}).json()["results"][0]
        r = c.post("/score", json={"sentences": ["the stock market rose"] + [f"the market {i}" for i in range(6)]})
    assert r.status_code == 200
    assert r.json()["results"][0]["logprob"] == pytest.approx(alone["logprob"], abs=1e-5)
    assert 7 in calls and max(n for n in calls[calls.index(7) :] if n <= 2) <= 2


def test_out_of_memory_on_a_single_sequence_is_a_500_not_a_hang(serve, monkeypatch) -> None:
    def always(self, items):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(ModelRunner, "_run", always)
    with serve(raise_server_exceptions=False) as c:
        assert_envelope(c.post("/score", json={"text": "the stock"}), 500, "internal_error")
        assert c.get("/healthz").status_code == 200


# --- a client that goes away ----------------------------------------------------------------------------------


def test_work_of_a_client_that_disconnects_is_dropped_not_computed(service_ckpt) -> None:
    """A real server holds the sequence in its queue (a 3 s batching wait); the client hangs up after 0.3 s; the
    sequence is cancelled, no forward pass runs for it, and the rejection is counted."""
    from test_service_shutdown import start

    proc, base = start(service_ckpt.path, LMSERVE_MAX_WAIT_MS="3000")
    try:
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"text": "the stock market"}).encode()
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)
        time.sleep(3.5)  # past the batching wait: a forward pass would have run by now
        samples = get_metrics(httpx.Client(base_url=base))
        assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="client_closed") == 1
        assert metric(samples, "lmserve_batch_size_count") == 0
        assert httpx.post(base + "/score", json={"text": "the stock"}, timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    log = proc.stderr.read()
    assert "never retrieved" not in log and "Traceback" not in log, log  # the cancellation is not an error


# --- bad checkpoints at start ---------------------------------------------------------------------------------


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["truncated", "tampered", "mismatched", "missing vocab"])
def test_bad_checkpoint_is_refused_at_start_with_one_line(service_ckpt, tmp_path: Path, damage: str) -> None:
    ck = copy_checkpoint(service_ckpt.path, tmp_path / "ck")
    weights = ck / WEIGHTS_FILE
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "tampered":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "mismatched":
        meta = json.loads((ck / CONFIG_FILE).read_text())
        meta["hidden_size"] += 1
        (ck / CONFIG_FILE).write_text(json.dumps(meta))
    else:
        (ck / "vocab.txt").unlink()
    proc = run_service_cli("--model", str(ck), "--port", "0")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert str(ck) in lines[0]
