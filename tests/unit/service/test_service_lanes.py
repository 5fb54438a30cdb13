"""Forward lanes (`forward_lanes`): several batches in flight at once, each in its own thread with its share of
torch's threads. The answers are those of one lane (to float32 rounding); the prefix cache is shared between the
lanes."""

from __future__ import annotations

import asyncio
import math
import random
import threading
from typing import Any

import torch
from fastapi.testclient import TestClient
from service_helpers import parse_metrics, run_async

from service.app import create_app
from service.runner import ModelRunner, default_lanes

WORDS = ["the", "company", "said", "profits", "rose", "to", "a", "new", "billion", "in", "the", "last", "quarter"]


def bodies(seed: int) -> list[tuple[str, dict]]:
    """/score and /next-word requests, many prefixes sharing their beginnings (the prefix cache's case)."""
    rng = random.Random(seed)
    out: list[tuple[str, dict]] = []
    for i in range(60):
        words = rng.choices(WORDS, k=rng.randint(1, 12))
        if i % 2:
            out.append(("/score", {"text": " ".join(words), "per_token": True}))
        else:
            out.append(("/next-word", {"prefix": " ".join(words[: rng.randint(0, len(words))]), "top_k": 5}))
    return out


def answers(app, requests: list[tuple[str, dict]]) -> tuple[list, dict]:
    """All requests at once (the engine forms several batches), then the metrics."""

    async def body(client):
        responses = await asyncio.gather(*(client.post(path, json=b) for path, b in requests))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        metrics = await client.get("/metrics")
        return [r.json() for r in responses], parse_metrics(metrics.text)

    return run_async(app, body)


def same(a: Any, b: Any) -> bool:
    """Equal JSON, numbers to float32 rounding: a batch's rows and threads decide the last bits of a matmul, and
    lanes form other batches (and run them on fewer threads) than one lane does."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_two_lanes_answer_what_one_lane_does(make_app, monkeypatch) -> None:
    requests = bodies(seed=3)
    one, _ = answers(make_app(max_batch_sequences=4, max_wait_ms=5), requests)
    widths: list[bool] = []
    lane_width = ModelRunner.lane_width

    def record(runner: ModelRunner, wide: bool) -> None:
        widths.append(wide)
        lane_width(runner, wide)

    monkeypatch.setattr(ModelRunner, "lane_width", record)
    two, samples = answers(make_app(max_batch_sequences=4, max_wait_ms=5, forward_lanes=2), requests)
    assert False in widths  # passes ran side by side
    assert [same(x, y) for x, y in zip(one, two, strict=True)] == [True] * len(requests)
    assert samples[("lmserve_batch_size_count", frozenset())] >= 15  # 60 requests in batches of 4 at most


def test_lanes_default_to_two_on_a_cpu_of_two_threads_or_more_and_one_elsewhere(make_settings, service_ckpt) -> None:
    """Left open, the lanes follow the machine: two on a CPU with two or more torch threads, one with a single
    thread or on a GPU; a number in the settings is taken as it is. The engine runs as many as the runner says,
    and /model tells both."""
    assert default_lanes(torch.device("cpu"), 2) == 2
    assert default_lanes(torch.device("cpu"), 16) == 2
    assert default_lanes(torch.device("cpu"), 1) == 1
    assert default_lanes(torch.device("cuda"), 8) == 1
    before = torch.get_num_threads()
    try:
        assert make_settings().forward_lanes is None
        for threads, lanes, expected in ((2, None, (2, 1)), (1, None, (1, 1)), (4, 1, (1, 4)), (4, 3, (3, 1))):
            runner = ModelRunner(service_ckpt, make_settings(threads=threads, forward_lanes=lanes))
            assert (runner.lanes, runner.lane_threads) == expected
        app = create_app(make_settings(threads=2))
        with TestClient(app) as client:
            body = client.get("/model").json()
            assert (body["threads"], body["forward_lanes"], app.state.engine.lanes) == (2, 2, 2)
    finally:
        torch.set_num_threads(before)


def test_a_lane_takes_its_share_of_the_threads_in_its_own_thread(make_settings, service_ckpt) -> None:
    """Beside another pass, a lane's share; alone, what the other lanes' teams leave (with the process's first
    thread, the OpenMP teams stay within the threads: 1 + (3 - 1) + (2 - 1) = 4). The runner sets nothing in the
    thread that builds it."""
    before = torch.get_num_threads()
    try:
        runner = ModelRunner(service_ckpt, make_settings(threads=4, forward_lanes=2))
        assert (runner.threads, runner.lane_threads, runner.wide_threads) == (4, 2, 3)
        seen = {}

        def lane(wide: bool) -> None:
            runner.lane_width(wide)
            seen[wide] = torch.get_num_threads()

        for wide in (False, True):
            t = threading.Thread(target=lane, args=(wide,))
            t.start()
            t.join()
        assert seen == {False: 2, True: 3}
        assert torch.get_num_threads() == before  # the calling thread's own count is its own
        narrow = ModelRunner(service_ckpt, make_settings(threads=3, forward_lanes=8))
        assert (narrow.lane_threads, narrow.wide_threads) == (1, 3)  # one-thread lanes keep no team: all for one
        alone = ModelRunner(service_ckpt, make_settings(threads=4, forward_lanes=1))
        assert (alone.lane_threads, alone.wide_threads) == (4, 4)
    finally:
        torch.set_num_threads(before)
