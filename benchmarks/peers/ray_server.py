"""The checkpoint behind Ray Serve, with `@serve.batch`, as its docs show it.

    python -m benchmarks.peers.ray_server --port 8002 --max-batch-size 32 --batch-wait-timeout-s 0.005

Ray binds the machine's external address even when told 127.0.0.1: run this only inside a private network
namespace (`unshare -n bash -c 'ip link set lo up; python -m benchmarks.peers.ray_server ...'`), with the
client in the same namespace; the HTTP load benchmark does so itself.

One deployment answers `/score` (`{"text": ...}`) and `/next-word` (`{"prefix": ..., "top_k": ...}`); each
route awaits its own `@serve.batch` method, which gets up to `max_batch_size` requests' inputs (or what came
within `batch_wait_timeout_s`) and runs one padded batch through `PlainTorchModel`. `max_ongoing_requests` is
raised to let a replica hold a whole batch per route (its default, 5, would cap every batch at 5).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import ray
from ray import serve
from starlette.requests import Request

from benchmarks.peers.plain_torch import PlainTorchModel


@serve.deployment
class LanguageModel:
    def __init__(self, model_dir: str, threads: int | None, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.lm = PlainTorchModel(model_dir, threads)
        for method in (self.score, self.next_word):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch
    async def score(self, texts: list[str]) -> list[dict]:
        return self.lm.score(texts)

    @serve.batch
    async def next_word(self, inputs: list[tuple[str, int]]) -> list[dict]:
        return self.lm.next_word([p for p, _ in inputs], [k for _, k in inputs])

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        if request.url.path.rstrip("/").endswith("/next-word"):
            result = await self.next_word((body["prefix"], int(body.get("top_k", 10))))
        else:
            result = await self.score(body["text"])
        return {"model": self.lm.name, "results": [result]}


def start_ray(attempts: int = 3) -> None:
    """`ray.init()`, tried again if the node fails to start: the raylet gives its dashboard agent 15 s to write
    its ports down, and on a busy machine a cold agent misses that; a second try finds its modules cached."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(include_dashboard=False, log_to_driver=False)
            return
        except Exception:  # Ray raises a bare Exception for "the current node timed out during startup"
            ray.shutdown()
            if attempt == attempts:
                raise
            print(f"ray did not start (attempt {attempt} of {attempts}); trying again", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/ptb-cpu")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads per replica")
    args = p.parse_args(argv)
    start_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = LanguageModel.options(
        num_replicas=args.replicas,
        max_ongoing_requests=max(64, 2 * args.max_batch_size),
        ray_actor_options={"num_cpus": 0},
    ).bind(str(args.model), args.threads, args.max_batch_size, args.batch_wait_timeout_s)
    serve.run(app, route_prefix="/")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
