"""The HTTP layer's own CPU per request: the app driven in process over ASGI (no sockets, no uvicorn), its model
replaced by an instant one, so that what is left is what the event loop spends on each request (middleware,
routing, validation, normalising, the engine's queue and hand-offs, building and sending the answer, the
metrics and the access-log line) on top of the forward pass.

    python -m benchmarks.loop_cost                            # /score and /next-word, with and without the lane
    python -m benchmarks.loop_cost --endpoints /score --requests 2000 --rounds 5
    python -m benchmarks.loop_cost --endpoints /score --pass-ms 150 --requests 1000   # requests that wait

On two cores the event loop and the forward pass share the CPU (and the GIL): every microsecond here is one the
forward pass does not get under load. Each round sends `--requests` requests from `--concurrency` concurrent
callers (one PTB test sentence per `/score`, a prefix of one and top_k 10 per `/next-word`, as
`benchmarks.http_load` sends them) to the app with the fast lane (service.lane) and to the app without it
(every request through FastAPI), alternately; the figure is the median over the rounds of the process's CPU
time per request. The log goes to /dev/null through the service's own JSON log configuration.

With `--pass-ms N` each forward pass takes N ms of wall time and no CPU (the instant model sleeps in its
thread), so that requests wait in the queue as they do under load (a pass of 32 sentences takes about 150 ms
on two cores): what the loop spends on a request while it waits (the engine's questions to its client whether
it is still there, its timers) counts too.

With `--gc` the fast-lane app runs under Python's garbage-collector defaults and under the service's steady
heap (`service.memory.steady_heap`: what startup built frozen out of the collector's reach, its first generation
collected after LMSERVE_GC_THRESHOLD new objects), alternately, and the collector's work is counted too: its
collections per generation, the time they took, the longest one (every collection stops the event loop and
holds the GIL):

    python -m benchmarks.loop_cost --gc --endpoints /score /next-word --pass-ms 150 --requests 3000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging.config
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_DATA_DIR, command_line, machine, median, ptb_test_sentences, table
from benchmarks.http_load import body_pools
from lm.scoring import TokenScores
from service.app import create_app
from service.logs import log_config
from service.memory import steady_heap
from service.runner import NextJob, ScoreJob
from service.settings import Settings

ENDPOINTS = {"/score": "/score 1", "/next-word": "/next-word"}
LANE, FASTAPI = "fast lane", "through FastAPI"
DEFAULTS, STEADY = "Python's defaults", "steady heap (the service's)"


def instant(vocab_size: int, seconds: float = 0.0):
    """A forward pass that costs no CPU: the right shapes, made up numbers, after `seconds` asleep."""

    def run(jobs):
        time.sleep(seconds)
        out = []
        for job in jobs:
            if isinstance(job, ScoreJob):
                out.append(TokenScores(torch.full((len(job.ids) - 1,), -5.0)))
            elif isinstance(job, NextJob):
                out.append(torch.full((vocab_size,), -9.2))
            else:
                raise TypeError(type(job).__name__)
        return out

    return run


async def call(app, path: str, body: bytes) -> int:
    """One POST through the app's ASGI interface; the status."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    await app(scope, receive, send)
    return sent[0]["status"]


async def cpu_per_request(app, path: str, bodies: list[bytes], requests: int, concurrency: int) -> float:
    """Microseconds of process CPU per request over `requests` requests from `concurrency` callers."""
    rng = random.Random(0)
    left = [requests]

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            status = await call(app, path, rng.choice(bodies))
            if status != 200:
                raise RuntimeError(f"{path} answered {status}")

    start = time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return 1e6 * (time.process_time() - start) / requests


class GcWatch:
    """The garbage collector's work while `on`: collections per generation, their total and longest pause."""

    def __init__(self) -> None:
        self.on = False
        self.collections = [0, 0, 0]
        self.seconds = 0.0
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._seen)

    def start(self) -> None:
        """From nothing, watching."""
        self.collections, self.seconds, self.longest, self.on = [0, 0, 0], 0.0, 0.0, True

    def close(self) -> None:
        gc.callbacks.remove(self._seen)

    def _seen(self, phase: str, info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.collections[info["generation"]] += 1
        self.seconds += pause
        self.longest = max(self.longest, pause)


@dataclass
class Round:
    """One round of one setup: CPU microseconds per request and the garbage collector's work meanwhile."""

    us: float
    collections: list[int]
    gc_ms: float
    longest_ms: float


async def measure(args: argparse.Namespace) -> dict[tuple[str, str], list[Round]]:
    """Rounds of each setup, alternating. Without --gc the setups are the app with and without the fast lane,
    under the heap the server runs with; with --gc, the fast-lane app under Python's garbage-collector defaults
    and under the server's steady heap (service.memory.steady_heap), switched between rounds (the collector's
    settings are the process's)."""
    pools = body_pools(args.data_dir)
    threshold = Settings().gc_threshold
    if args.gc:
        setups = {DEFAULTS: True, STEADY: True}
        heaps = {DEFAULTS: 0, STEADY: threshold}
    else:
        setups = {LANE: True, FASTAPI: False}
        heaps = {LANE: threshold, FASTAPI: threshold}
    apps = {}
    for fast_lane in set(setups.values()):
        # Each app leaves the collector alone (gc_threshold 0): the rounds set it, as `heaps` says.
        app = create_app(Settings(model=args.model, gc_threshold=0), fast_lane=fast_lane)
        apps[fast_lane] = (app, app.router.lifespan_context(app))
    results: dict[tuple[str, str], list[Round]] = {}
    watch = GcWatch()
    for app, ctx in apps.values():
        await ctx.__aenter__()
        app.state.engine.run_batch = instant(len(app.state.ckpt.vocab), args.pass_ms / 1000)
    try:
        for endpoint in args.endpoints:
            path, lines, _ = pools[ENDPOINTS[endpoint]]
            bodies = [line.encode() for line in lines]
            for name, fast_lane in setups.items():  # warm-up
                with steady_heap(heaps[name]):
                    await cpu_per_request(apps[fast_lane][0], path, bodies, args.requests // 4, args.concurrency)
            for r in range(args.rounds):
                for name in list(setups) if r % 2 == 0 else list(setups)[::-1]:
                    with steady_heap(heaps[name]):
                        watch.start()
                        us = await cpu_per_request(apps[setups[name]][0], path, bodies, args.requests, args.concurrency)
                        watch.on = False
                    per_1k = 1000 / args.requests
                    results.setdefault((endpoint, name), []).append(
                        Round(
                            us,
                            [round(n * per_1k, 1) for n in watch.collections],
                            1000 * watch.seconds * per_1k,
                            1000 * watch.longest,
                        )
                    )
    finally:
        watch.close()
        for _, ctx in apps.values():
            await ctx.__aexit__(None, None, None)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", nargs="+", choices=list(ENDPOINTS), default=list(ENDPOINTS))
    p.add_argument("--requests", type=int, default=3000, help="requests per round")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="rounds per app, alternating")
    p.add_argument("--pass-ms", type=float, default=0.0, help="wall time of each forward pass (no CPU)")
    p.add_argument(
        "--gc", action="store_true", help="the fast lane under Python's collector defaults against the steady heap"
    )
    p.add_argument("--model", type=Path, default=Settings().model)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = p.parse_args()
    ptb_test_sentences(args.data_dir)  # fails early without the data
    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # the service's log, as configured, goes nowhere
    logging.config.dictConfig(log_config("info"))
    try:
        import uvloop  # the server's loop (uvicorn[standard])

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(measure(args))
    sys.stdout = stdout
    model = f"a model whose passes take {args.pass_ms:g} ms and no CPU" if args.pass_ms else "an instant model"
    print(
        f"{machine()}; `{command_line()}`; {args.requests} requests x {args.rounds} rounds per setup, alternating, "
        f"{args.concurrency} concurrent callers, {model}; median CPU microseconds per request.\n"
    )
    if args.gc:
        rows = []
        for (endpoint, name), rounds in results.items():
            rows.append(
                [
                    endpoint,
                    name,
                    f"{median([r.us for r in rounds]):,.0f}",
                    " / ".join(f"{median([r.collections[g] for r in rounds]):g}" for g in range(3)),
                    f"{median([r.gc_ms for r in rounds]):.1f}",
                    f"{max(r.longest_ms for r in rounds):.1f}",
                ]
            )
        header = ["endpoint", "heap", "CPU us / request", "collections / 1,000 requests (gen 0 / 1 / 2)"]
        print(table([*header, "collecting ms / 1,000 requests", "longest collection ms"], rows))
    else:
        rows = []
        for endpoint in args.endpoints:
            lane = median([r.us for r in results[(endpoint, LANE)]])
            plain = median([r.us for r in results[(endpoint, FASTAPI)]])
            rows.append([endpoint, f"{plain:,.0f}", f"{lane:,.0f}", f"{plain / lane:.2f}x"])
        print(table(["endpoint", "through FastAPI (us)", "fast lane (us)", "saved"], rows))
    print(json.dumps({f"{e} {name}": [r.us for r in v] for (e, name), v in results.items()}))


if __name__ == "__main__":
    main()
