"""Helpers of the service tests: the by-hand reference, the error envelope, Prometheus parsing, async driving."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tiny_models import TinyCheckpoint

from benchmarks.common import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]

# The perplexities written into the tiny checkpoint's config.json (/model must report them).
METRICS = {"valid_ppl": 123.5, "test_ppl": 119.25, "train_ppl": 88.0, "best_epoch": 7}


def run_service_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m service ARGS` to its end, in the repository, without any LMSERVE_* of the caller's
    environment (only those of `env`); its output captured as text."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LMSERVE_")}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_async(app: FastAPI, body: Callable[[httpx.AsyncClient], Awaitable[Any]], **transport: Any) -> Any:
    """Run `body(client)` in a fresh event loop with the app's lifespan started: many requests, one loop."""

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            asgi = httpx.ASGITransport(app=app, **transport)
            async with httpx.AsyncClient(transport=asgi, base_url="http://test", timeout=60) as client:
                return await body(client)

    return asyncio.run(main())


def reference_logprobs(ckpt: TinyCheckpoint, tokens: list[str]) -> list[float]:
    """log p(token_t | <eos>, tokens[:t]) for every token, from one plain forward pass (float64 softmax)."""
    ids = [ckpt.vocab.eos_id] + [ckpt.vocab.stoi[t] for t in tokens]
    with torch.no_grad():
        logits, _ = ckpt.model(torch.tensor([ids]))  # (1, T, V)
    lp = torch.log_softmax(logits[0].double(), dim=-1)
    return [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]


def reference_next_logprobs(ckpt: TinyCheckpoint, tokens: list[str]) -> torch.Tensor:
    """The log-distribution (V,) of the word after `<eos> tokens...`, from one plain forward pass."""
    ids = [ckpt.vocab.eos_id] + [ckpt.vocab.stoi[t] for t in tokens]
    with torch.no_grad():
        logits, _ = ckpt.model(torch.tensor([ids]))
    return torch.log_softmax(logits[0, -1].double(), dim=-1)


def assert_envelope(response: httpx.Response, status: int | None = None, code: str | None = None) -> dict:
    """The error body is `{"error": {"code", "message", "details", "type", "param"}}` and nothing else; returns
    `error`."""
    if status is not None:
        assert response.status_code == status, response.text
    assert 400 <= response.status_code < 600
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details", "type", "param"}, error
    status_type = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
    default = "server_error" if response.status_code >= 500 else "invalid_request_error"
    assert error["type"] == status_type.get(response.status_code, default), error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


class Samples(dict):
    """{(sample name, frozenset of label pairs): value}, and the names of the metric families exposed (a labelled
    counter nothing has counted yet is a family without samples)."""

    families: frozenset[str] = frozenset()

    def exposes(self, name: str) -> bool:
        """Whether `name` is a sample name of an exposed family (`x`, `x_total`, `x_count`, `x_sum`, ...)."""
        suffixes = ("", "_total", "_count", "_sum", "_bucket", "_created")
        return any(name == family + suffix for family in self.families for suffix in suffixes)


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> {(sample name, frozenset of label pairs): value}, with the family names."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = Samples()
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    samples.families = frozenset(families)
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample; a sample that is not exposed fails the test (a renamed or dropped metric must
    not read as 0)."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        similar = sorted({f"{n}{dict(lab)}" for n, lab in samples if n == name}) or "none"
        raise AssertionError(f"no sample {name}{labels} exposed; samples of that name: {similar}")
    return samples[key]


def metric_or_zero(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample, 0.0 when that labelled child is absent: for a counter whose label value nothing
    has used yet (Prometheus reads it as 0). The metric itself must be exposed: a renamed or dropped metric
    fails here too."""
    if not samples.exposes(name):
        raise AssertionError(f"no metric {name} exposed (families: {sorted(samples.families)})")
    return samples.get((name, frozenset(labels.items())), 0.0)


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels` (at least one must be exposed)."""
    want = set(labels.items())
    values = [v for (n, lab), v in samples.items() if n == name and want <= set(lab)]
    if not values:
        raise AssertionError(f"no sample {name}{labels} exposed")
    return sum(values)


def get_metrics(client: TestClient | httpx.Client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return parse_metrics(r.text)


def start_server(
    model: Path, *args: str, stdout=subprocess.DEVNULL, env: dict[str, str] | None = None, **settings: str
) -> tuple[subprocess.Popen, str]:
    """The server as `python -m service ARGS` runs it, on a free port, once ready; its access log (stdout) goes
    to `stdout`; `env` replaces the environment, `settings` (LMSERVE_*=...) are added to it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--model", str(model), "--port", str(port), *args],
        cwd=REPO_ROOT,
        env={**(os.environ if env is None else env), "LMSERVE_THREADS": "1", **settings},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server not ready: {proc.stderr.read()}")
