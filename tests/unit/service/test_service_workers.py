"""Several worker processes, one set of metrics: every scrape adds up all workers, whichever one answers it."""

from __future__ import annotations

import os
import signal

import httpx
from service_helpers import metric, parse_metrics, start_server

REQUESTS = 40


def test_metrics_of_two_workers_add_up_in_every_scrape(service_ckpt, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc, base = start_server(service_ckpt.path, "--workers", "2", env=env)
    try:
        for i in range(REQUESTS):
            # A new connection each time, so that both workers take some.
            with httpx.Client(timeout=30) as client:
                assert client.post(base + "/score", json={"text": f"the stock market {i}"}).status_code == 200
        seen = set()
        for _ in range(10):
            with httpx.Client(timeout=30) as client:
                samples = parse_metrics(client.get(base + "/metrics").text)
            seen.add(metric(samples, "lmserve_requests_total", endpoint="/score", code="200"))
        assert seen == {REQUESTS}, f"scrapes read {sorted(seen)} /score requests, not {REQUESTS}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_a_single_worker_keeps_its_own_registry_and_process_metrics(service_ckpt) -> None:
    proc, base = start_server(service_ckpt.path)
    try:
        text = httpx.get(base + "/metrics", timeout=30).text
        assert "process_resident_memory_bytes" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
