"""GET /metrics: the names of docs/architecture.md, the engine's batching made visible, counters that add up."""

from __future__ import annotations

import asyncio
import re

import pytest
from service_helpers import get_metrics, metric, metric_sum, parse_metrics, run_async

DOCUMENTED_METRICS = [
    "lmserve_requests_total",
    "lmserve_request_duration_seconds",
    "lmserve_requests_rejected_total",
    "lmserve_queue_size",
    "lmserve_queue_wait_seconds",
    "lmserve_batch_size",
    "lmserve_batch_tokens",
    "lmserve_batch_inference_duration_seconds",
    "lmserve_batches_total",
    "lmserve_tokens_scored_total",
    "lmserve_oov_tokens_total",
    "lmserve_scored_nll_nats_total",
    "lmserve_model_info",
]


def exposed_names(text: str) -> set[str]:
    """Every metric name in the text: from `# TYPE` lines and from the samples themselves."""
    names = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, flags=re.M))
    return names


def test_metrics_expose_every_name_of_the_design(client, service_ckpt) -> None:
    assert client.post("/score", json={"text": "the stock market rose"}).status_code == 200
    assert client.post("/score", json={"text": 5}).status_code == 422
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    names = exposed_names(r.text)
    missing = [n for n in DOCUMENTED_METRICS if n not in names]
    assert not missing, f"not exposed: {missing}"
    assert names & {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    samples = parse_metrics(r.text)
    info = [lab for (name, lab), v in samples.items() if name == "lmserve_model_info" and v == 1]
    assert info == [frozenset({("model", service_ckpt.path.name), ("device", "cpu"), ("dtype", "float32")})]
    assert metric(samples, "lmserve_requests_total", endpoint="/score", code="200") == 1
    assert metric(samples, "lmserve_requests_total", endpoint="/score", code="422") == 1
    assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="bad_request") == 1
    assert metric(samples, "lmserve_request_duration_seconds_count", endpoint="/score") == 2
    assert metric(samples, "lmserve_queue_size") == 0
    # Duration buckets start at 0.25 ms: the default buckets cannot see LSTM inference.
    assert (
        "lmserve_request_duration_seconds_bucket",
        frozenset({("endpoint", "/score"), ("le", "0.00025")}),
    ) in samples
    assert ("lmserve_batch_inference_duration_seconds_bucket", frozenset({("le", "0.00025")})) in samples


def test_token_oov_and_nll_counters_add_up(client) -> None:
    before = get_metrics(client)
    sentences = ["The company said profits rose 5% to $30 million.", "the zebra sang", "", "mr. smith did n't say"]
    r = client.post("/score", json={"sentences": sentences})
    assert r.status_code == 200
    results = r.json()["results"]
    r2 = client.post("/score", json={"text": "xylophones rose", "add_eos": False})
    assert r2.status_code == 200
    results += r2.json()["results"]
    after = get_metrics(client)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    num_tokens = sum(res["num_tokens"] for res in results)
    assert num_tokens == 12 + 4 + 1 + 6 + 2
    assert delta("lmserve_tokens_scored_total", endpoint="/score") == num_tokens
    assert delta("lmserve_oov_tokens_total") == sum(res["num_oov"] for res in results) == 3  # zebra, sang, xylophones
    nll = -sum(res["logprob"] for res in results)
    assert nll > 0
    assert delta("lmserve_scored_nll_nats_total") == pytest.approx(nll, rel=1e-9, abs=1e-9)
    # The live perplexity of docs/architecture.md: exp(nll / tokens) over these requests.
    assert delta("lmserve_batch_size_count") >= 2


def test_next_word_counts_its_predictions_but_not_the_nll(client) -> None:
    before = get_metrics(client)
    assert client.post("/next-word", json={"prefixes": ["the", "", "a b c"], "top_k": 2}).status_code == 200
    after = get_metrics(client)
    assert metric(after, "lmserve_tokens_scored_total", endpoint="/next-word") - metric(
        before, "lmserve_tokens_scored_total", endpoint="/next-word"
    ) == pytest.approx(3)
    assert metric(after, "lmserve_scored_nll_nats_total") == metric(before, "lmserve_scored_nll_nats_total")


def test_the_engine_really_batches_concurrent_requests(make_app) -> None:
    app = make_app(max_wait_ms=50)
    texts = [" ".join(["the stock market rose"] * (1 + i % 5)) for i in range(32)]

    async def body(client):
        responses = await asyncio.gather(*(client.post("/score", json={"text": t}) for t in texts))
        assert [r.status_code for r in responses] == [200] * 32
        return (await client.get("/metrics")).text

    samples = parse_metrics(run_async(app, body))
    count = metric(samples, "lmserve_batch_size_count")
    total = metric(samples, "lmserve_batch_size_sum")
    assert total == 32  # the warm-up runs outside the engine
    assert count < total, f"{count} forward passes for {total} sequences: nothing was batched"
    # At least one forward pass carried several sequences.
    assert metric(samples, "lmserve_batch_size_bucket", le="1.0") < count
    batches = {dict(lab)["trigger"]: v for (name, lab), v in samples.items() if name == "lmserve_batches_total"}
    assert set(batches) >= {"full", "timeout"}
    assert sum(batches.values()) == count
    assert metric_sum(samples, "lmserve_queue_wait_seconds_count") == 32
    assert metric(samples, "lmserve_batch_tokens_sum") >= sum(len(t.split()) + 2 for t in texts)


def test_a_full_batch_is_triggered_by_max_batch_sequences(make_app) -> None:
    app = make_app(max_wait_ms=2000, max_batch_sequences=4)

    async def body(client):
        r = await client.post("/score", json={"sentences": ["the stock market rose"] * 8})
        assert r.status_code == 200
        return (await client.get("/metrics")).text

    samples = parse_metrics(run_async(app, body))
    assert metric(samples, "lmserve_batches_total", trigger="full") == 2
    assert metric(samples, "lmserve_batch_size_sum") == 8
    assert metric(samples, "lmserve_batch_size_count") == 2
