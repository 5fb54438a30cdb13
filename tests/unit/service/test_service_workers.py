"""Several worker processes, one set of metrics: every scrape adds up all workers, whichever one answers it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

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


def worker_pids(directory: Path) -> set[int]:
    """The pids of the workers that wrote live gauges into the multiprocess directory."""
    return {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("gauge_live*.db")}


def wait_for_workers(directory: Path, count: int, besides: set[int] = frozenset(), within_s: float = 60) -> set[int]:
    """The pids of `count` workers (not those in `besides`) that have started, once they have."""
    deadline = time.monotonic() + within_s
    while len(pids := worker_pids(directory) - besides) < count:
        assert time.monotonic() < deadline, f"{len(pids)} of {count} workers started within {within_s} s"
        time.sleep(0.2)
    return pids


def test_a_worker_killed_while_the_supervisor_awaits_its_ping_is_replaced_at_once(service_ckpt, tmp_path) -> None:
    """The supervisor pings each worker in turn and waits up to 60 s for the answer; a worker that dies during
    that wait is replaced as soon as it dies, not when the 60 s are up."""
    metrics_dir = tmp_path / "metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc, base = start_server(service_ckpt.path, "--workers", "2", env=env)
    try:
        workers = wait_for_workers(metrics_dir, 2)
        stuck = min(workers)
        os.kill(stuck, signal.SIGSTOP)  # it cannot answer: the supervisor's next round waits on its ping
        time.sleep(2)  # a round starts every 0.5 s
        os.kill(stuck, signal.SIGKILL)
        wait_for_workers(metrics_dir, 1, besides=workers, within_s=30)
        with httpx.Client(timeout=30) as client:
            for _ in range(4):
                assert client.post(base + "/score", json={"text": "the stock market"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_a_dead_workers_live_gauges_stop_counting(service_ckpt, tmp_path) -> None:
    """Both workers killed and replaced by uvicorn: the prefix-cache size (a live gauge) is the new workers'
    (nothing cached yet), not the dead ones' added to it; their files are gone after a scrape."""
    metrics_dir = tmp_path / "metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc, base = start_server(service_ckpt.path, "--workers", "2", env=env)
    try:
        for i in range(20):
            with httpx.Client(timeout=30) as client:
                r = client.post(base + "/next-word", json={"prefix": f"the stock market {'rose ' * i}"})
                assert r.status_code == 200
        cached = metric(parse_metrics(httpx.get(base + "/metrics", timeout=30).text), "lmserve_prefix_cache_entries")
        assert cached >= 20
        old = worker_pids(metrics_dir)
        assert len(old) == 2, old
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        wait_for_workers(metrics_dir, 2, besides=old)  # uvicorn starts a replacement for each
        for _ in range(50):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        samples = parse_metrics(httpx.get(base + "/metrics", timeout=30).text)
        assert metric(samples, "lmserve_prefix_cache_entries") == 0
        assert not worker_pids(metrics_dir) & old
        # What the dead workers counted is kept: counters add up what was done.
        assert metric(samples, "lmserve_requests_total", endpoint="/next-word", code="200") == 20
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
