"""Overload and failure: 429 before queuing, a failing batch fails only its requests, timeouts answer 504."""

from __future__ import annotations

import asyncio
import time

import torch
from service_helpers import assert_envelope, get_metrics, metric, parse_metrics, run_async

TEXT = {"text": "the stock market rose"}


def test_a_burst_over_max_queue_gets_429_with_retry_after(make_app) -> None:
    app = make_app(max_queue=2, max_wait_ms=200, retry_after_s=3)

    async def body(client):
        burst = await asyncio.gather(*(client.post("/score", json=TEXT) for _ in range(12)))
        after = await client.post("/score", json=TEXT)
        return burst, after, (await client.get("/metrics")).text

    burst, after, text = run_async(app, body)
    codes = [r.status_code for r in burst]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 2
    assert codes.count(429) >= 1
    for r in burst:
        if r.status_code == 429:
            assert_envelope(r, 429, "queue_full")
            assert r.headers["retry-after"] == "3"
    # The server still serves once the burst has passed.
    assert after.status_code == 200
    samples = parse_metrics(text)
    assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="queue_full") == codes.count(
        429
    )
    assert metric(samples, "lmserve_requests_total", endpoint="/score", code="429") == codes.count(429)
    assert metric(samples, "lmserve_batch_size_sum") == codes.count(200) + 1


def test_a_request_is_queued_all_or_nothing(make_app) -> None:
    app = make_app(max_queue=3, max_wait_ms=200)

    async def body(client):
        first = asyncio.create_task(client.post("/score", json={"sentences": ["the", "a"]}))
        for _ in range(100):  # until the first two sequences are queued (the batch waits for company)
            if app.state.engine.queue_size() == 2:
                break
            await asyncio.sleep(0.002)
        assert app.state.engine.queue_size() == 2
        second = await client.post("/score", json={"sentences": ["the", "a"]})
        return await first, second, app.state.engine.queue_size()

    first, second, left = run_async(app, body)
    assert first.status_code == 200
    assert_envelope(second, 429, "queue_full")
    assert left == 0


def test_a_failing_batch_fails_its_request_and_the_worker_keeps_serving(serve) -> None:
    with serve(raise_server_exceptions=False) as client:
        engine = client.app.state.engine
        real = engine.run_batch
        calls = []

        def fail_once(items):
            calls.append(len(items))
            if len(calls) == 1:
                raise RuntimeError("secret detail: /etc/passwd CUDA out of memory")
            return real(items)

        engine.run_batch = fail_once
        r = client.post("/score", json=TEXT)
        error = assert_envelope(r, 500, "internal_error")
        assert "secret" not in r.text and "RuntimeError" not in r.text and "passwd" not in r.text
        assert error["details"] is None
        ok = client.post("/score", json=TEXT)
        assert ok.status_code == 200
        assert client.post("/next-word", json={"prefix": "the"}).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert calls[:2] == [1, 1]
        samples = get_metrics(client)
        assert metric(samples, "lmserve_requests_total", endpoint="/score", code="500") == 1
        assert metric(samples, "lmserve_requests_total", endpoint="/score", code="200") == 1


def test_a_failing_batch_does_not_fail_a_concurrent_batch(make_app) -> None:
    app = make_app(max_batch_sequences=1, max_wait_ms=0)
    failed = []

    async def body(client):
        engine = app.state.engine
        real = engine.run_batch

        def fail_the_bad(items):
            if any(item.ids[1:2] == [app.state.ckpt.vocab.stoi["billion"]] for item in items):
                failed.append(len(items))
                raise RuntimeError("boom")
            return real(items)

        engine.run_batch = fail_the_bad
        texts = ["the stock market", "billion shares", "the company said", "billion dollars", "mr. smith"]
        return await asyncio.gather(*(client.post("/score", json={"text": t}) for t in texts))

    responses = run_async(app, body, raise_app_exceptions=False)
    assert [r.status_code for r in responses] == [200, 500, 200, 500, 200]
    assert failed == [1, 1]
    for r in responses[1::2]:
        assert_envelope(r, 500, "internal_error")
        assert "boom" not in r.text


def test_non_finite_output_is_an_error_not_a_number(serve) -> None:
    with serve(raise_server_exceptions=False) as client:
        with torch.no_grad():
            client.app.state.runner.model.decoder.bias.fill_(float("nan"))
        r = client.post("/score", json=TEXT)
        assert_envelope(r, 500, "internal_error")
        assert "nan" not in r.text.lower()
        assert client.get("/healthz").status_code == 200


def test_a_request_not_answered_in_time_gets_504(serve) -> None:
    with serve(request_timeout_s=0.2) as client:
        engine = client.app.state.engine
        real = engine.run_batch

        def slow(items):
            time.sleep(0.6)
            return real(items)

        engine.run_batch = slow
        r = client.post("/score", json=TEXT)
        error = assert_envelope(r, 504, "timeout")
        assert "0.2" in error["message"]
        engine.run_batch = real
        time.sleep(0.6)  # the worker finishes the abandoned batch (its result is dropped), then serves again
        assert client.post("/score", json=TEXT).status_code == 200
        samples = get_metrics(client)
        assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="timeout") == 1


def test_a_refusal_comes_before_normalising_and_after_busy_delay_ms(serve, monkeypatch) -> None:
    """Under overload a 429 must cost the server little (no text is normalised for it) and come slowly, so that
    clients retrying at once cannot spin the CPU away from the forward pass."""
    from lm.encoding import SentenceEncoder

    with serve(max_queue=1, busy_delay_ms=300) as client:
        prepared = []
        real = SentenceEncoder.split
        monkeypatch.setattr(SentenceEncoder, "split", lambda self, *a: prepared.append(a) or real(self, *a))
        t0 = time.perf_counter()
        r = client.post("/score", json={"sentences": ["the stock", "the market"]})  # 2 > max_queue
        waited = time.perf_counter() - t0
        assert_envelope(r, 429, "queue_full")
        assert "retry-after" in r.headers
        assert prepared == []
        assert waited >= 0.3
        r = client.post("/next-word", json={"prefixes": ["the", "a"]})
        assert_envelope(r, 429, "queue_full")
        assert client.post("/score", json=TEXT).status_code == 200 and len(prepared) == 1
    with serve(max_queue=1, busy_delay_ms=0) as client:
        t0 = time.perf_counter()
        assert client.post("/score", json={"sentences": ["the stock", "the market"]}).status_code == 429
        assert time.perf_counter() - t0 < 0.3
