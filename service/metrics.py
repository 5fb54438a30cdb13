"""Prometheus metrics (the names docs/architecture.md lists), one registry per app so that several apps can live
in one process.

With several worker processes (`--workers N`), every scrape must see all of them, whichever worker answers:
prometheus-client's multiprocess mode, where each process writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` and a scrape adds them up. `python -m service` sets that directory up.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# Doubling from 0.25 ms to ~4 s: LSTM inference and batching delay live in the first few milliseconds,
# where the default buckets (5 ms, 10 ms, ...) see nothing.
DURATION_BUCKETS = tuple(0.00025 * 2**k for k in range(15))
SIZE_BUCKETS = tuple(float(2**k) for k in range(11))  # 1 .. 1024 sequences
TOKEN_BUCKETS = tuple(float(2**k) for k in range(4, 19))  # 16 .. 262144 padded tokens

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")  # prometheus-client's name for a live gauge's file


def prepare_multiprocess(workers: int) -> Callable[[], None]:
    """Before the workers start: with more than one, a directory for their metric files (the operator's
    `PROMETHEUS_MULTIPROC_DIR`, emptied of a previous run's files, or a new temporary one). Returns what to
    call once the server has stopped (it removes a temporary directory)."""
    if workers <= 1:
        return lambda: None
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return lambda: None
    directory = Path(tempfile.mkdtemp(prefix="lmserve-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    return lambda: shutil.rmtree(directory, ignore_errors=True)


class Metrics:
    """Every metric the service exports; `render()` gives the Prometheus text format."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        if not self.multiprocess:  # per-process figures that cannot be added up across workers
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        p = "lmserve_"
        self.requests = Counter(p + "requests", "HTTP requests answered", ["endpoint", "code"], registry=r)
        self.request_duration = Histogram(
            p + "request_duration_seconds",
            "Time to answer a request",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            p + "requests_rejected",
            "Requests refused (queue_full, timeout, too_long, bad_request)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.queue_size = Gauge(
            p + "queue_size", "Sequences waiting for a forward pass", registry=r, multiprocess_mode="livesum"
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds", "Time a sequence waited in the queue", buckets=DURATION_BUCKETS, registry=r
        )
        self.batch_size = Histogram(p + "batch_size", "Sequences per forward pass", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            p + "batch_tokens", "Padded tokens (rows x longest) per forward pass", buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_duration = Histogram(
            p + "batch_inference_duration_seconds", "Time of one forward pass", buckets=DURATION_BUCKETS, registry=r
        )
        self.batches = Counter(p + "batches", "Forward passes, by what closed the batch", ["trigger"], registry=r)
        self.tokens_scored = Counter(p + "tokens_scored", "Predictions made", ["endpoint"], registry=r)
        self.oov_tokens = Counter(p + "oov_tokens", "Input words scored as <unk>", registry=r)
        self.nll = Counter(
            p + "scored_nll_nats",
            "Sum of -log p over /score predictions; live perplexity = exp(rate(this) / rate(tokens_scored))",
            registry=r,
        )
        self.prefix_cache_lookups = Counter(
            p + "prefix_cache_lookups",
            "/next-word prefixes looked up in the state cache: hit (some prefix cached) or miss",
            ["result"],
            registry=r,
        )
        self.prefix_cache_tokens_reused = Counter(
            p + "prefix_cache_tokens_reused", "Prefix tokens not re-run thanks to the state cache", registry=r
        )
        self.prefix_cache_entries = Gauge(
            p + "prefix_cache_entries", "LSTM states in the prefix cache", registry=r, multiprocess_mode="livesum"
        )
        self.model_info = Gauge(
            p + "model_info",
            "The model being served",
            ["model", "device", "dtype"],
            registry=r,
            multiprocess_mode="livemax",
        )
        for trigger in ("full", "timeout", "sparse"):
            self.batches.labels(trigger)
        for result in ("hit", "miss"):
            self.prefix_cache_lookups.labels(result)

    def render(self) -> bytes:
        """The Prometheus text format: this process's metrics, or every worker's added up."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        forget_dead_workers(os.environ[MULTIPROC_ENV])
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def forget_dead_workers(directory: str) -> list[int]:
    """Mark every worker whose process has ended as dead (`multiprocess.mark_process_dead`), so that its live
    gauges (queue size, prefix-cache entries, model info) stop counting: uvicorn replaces a worker that
    crashed or was killed, and without this the replacement's values would be added to the dead one's.
    Counters and histograms keep the dead worker's share (they count what was done). Returns the pids
    forgotten."""
    dead = set()
    for path in Path(directory).glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(path.name)
        if match and not process_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return sorted(dead)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
