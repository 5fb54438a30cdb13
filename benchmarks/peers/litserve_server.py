"""The checkpoint behind LitServe, with its dynamic batching, as its docs show it.

    python -m benchmarks.peers.litserve_server --port 8001 --max-batch-size 32 --batch-timeout 0.005

`/score` takes `{"text": ...}`, `/next-word` `{"prefix": ..., "top_k": ...}` (the service's single-item bodies).
Each API is a `LitAPI` whose `decode_request` picks the field, whose `predict` runs one padded batch through
`PlainTorchModel`, and whose `encode_response` wraps the result; LitServe collects up to `max_batch_size`
requests or waits `batch_timeout` seconds, and runs `workers_per_device` inference processes per API behind
`num_api_servers` HTTP front-end processes.
"""

from __future__ import annotations

import argparse

import litserve as ls

from benchmarks.peers.plain_torch import PlainTorchModel


class _ModelAPI(ls.LitAPI):
    """What both routes share: the model is loaded in each inference worker; batches are lists of inputs."""

    def __init__(self, model_dir: str, threads: int | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_dir, self.threads = model_dir, threads

    def setup(self, device: str) -> None:
        self.lm = PlainTorchModel(self.model_dir, self.threads)

    def batch(self, inputs: list) -> list:
        return inputs

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return {"model": self.lm.name, "results": [output]}


class ScoreAPI(_ModelAPI):
    """`/score`: one sentence per request, many per forward pass."""

    def decode_request(self, request: dict) -> str:
        return request["text"]

    def predict(self, texts: list[str]) -> list[dict]:
        return self.lm.score(texts)


class NextWordAPI(_ModelAPI):
    """`/next-word`: one prefix per request, many per forward pass."""

    def decode_request(self, request: dict) -> tuple[str, int]:
        return request["prefix"], int(request.get("top_k", 10))

    def predict(self, inputs: list[tuple[str, int]]) -> list[dict]:
        return self.lm.next_word([p for p, _ in inputs], [k for _, k in inputs])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/ptb-cpu")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    p.add_argument("--workers-per-device", type=int, default=1, help="inference processes per API")
    p.add_argument("--num-api-servers", type=int, default=1, help="HTTP front-end processes")
    p.add_argument("--fast-queue", action="store_true", help="ZeroMQ between the front end and the workers")
    p.add_argument("--threads", type=int, default=None, help="torch threads per inference process")
    args = p.parse_args(argv)
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    apis = [
        ScoreAPI(args.model, args.threads, api_path="/score", **batching),
        NextWordAPI(args.model, args.threads, api_path="/next-word", **batching),
    ]
    server = ls.LitServer(
        apis, accelerator="cpu", workers_per_device=args.workers_per_device, fast_queue=args.fast_queue
    )
    # No access log, as the service is measured (--log-level warning).
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=args.num_api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
