"""Generation speed: generated words per second for one stream and for many concurrent ones, and what each word
costs by its position (the 100th against the 1st: flat, because each word is one LSTM step from the state the
stream carries, never a pass over the whole prefix again).

    python -m benchmarks.generation                               # models/ptb-cpu, 1 and 64 streams, 100 words
    python -m benchmarks.generation --streams 1 4 --words 10 --repeats 1 --no-write

In process: `lm.generate.step` (what the runner's StepJob runs) for all streams at once, then a word sampled per
stream (temperature 1) and fed back; an `<eos>` sampled is fed back too (the next sentence starts), so every
stream makes exactly `--words` steps. Over HTTP: a real server (`python -m service`, a free port) and that many
concurrent `POST /v1/completions` (temperature 1, a seed each), each generating up to `--words` words through
the batching engine (words counted from `usage.completion_tokens`; a stream ends early at `<eos>`).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.common import (
    DEFAULT_DATA_DIR,
    REPO,
    median,
    ptb_test_sentences,
    start_server,
    stop_server,
    table,
    write_section,
)
from lm.checkpoint import load_checkpoint
from lm.generate import choose_token, step
from lm.scoring import final_states, next_from_states


def prompts(vocab, data_dir: Path, n: int, words: int = 5) -> list[list[int]]:
    """`<eos>` and the first `words` words of n PTB test sentences (cycled when n is larger than the file)."""
    lines = [line.split()[:words] for line in ptb_test_sentences(data_dir) if len(line.split()) >= words]
    return [[vocab.eos_id, *vocab.encode(lines[i % len(lines)])] for i in range(n)]


def in_process(model, vocab, data_dir: Path, streams: int, words: int) -> tuple[float, list[float]]:
    """(words per second over all streams, seconds of each step by position) for one run."""
    seqs = prompts(vocab, data_dir, streams)
    gens = [torch.Generator().manual_seed(i) for i in range(streams)]
    h, c = final_states(model, seqs)
    dists = next_from_states(model, h)
    per_step = []
    start = time.perf_counter()
    for _ in range(words):
        t0 = time.perf_counter()
        tokens = [choose_token(dists[b], 1.0, 1.0, gens[b]) for b in range(streams)]
        dists, (h, c) = step(model, tokens, (h, c))
        per_step.append(time.perf_counter() - t0)
    return streams * words / (time.perf_counter() - start), per_step


def over_http(base: str, streams: int, words: int) -> float:
    """Generated words per second of `streams` concurrent /v1/completions requests."""
    import httpx

    def one(seed: int) -> int:
        body = {"prompt": "the company said", "max_tokens": words, "temperature": 1.0, "seed": seed}
        r = httpx.post(base + "/v1/completions", json=body, timeout=300)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    with ThreadPoolExecutor(streams) as pool:
        start = time.perf_counter()
        total = sum(pool.map(one, range(streams)))
        return total / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "ptb-cpu")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    p.add_argument("--words", type=int, default=100, help="words generated per stream")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-http", action="store_true", help="in process only")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md as it is")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.model)
    model = ckpt.model.eval()
    in_process(model, ckpt.vocab, args.data_dir, 2, 3)  # warm-up
    rows, cost_rows = [], []
    for n in args.streams:
        runs = [in_process(model, ckpt.vocab, args.data_dir, n, args.words) for _ in range(args.repeats)]
        rate = median([r[0] for r in runs])
        # The first and the last `window` words of every run: single steps are noisy on a shared machine.
        window = max(1, min(10, args.words // 2))
        first = median([t for r in runs for t in r[1][:window]]) * 1000
        last = median([t for r in runs for t in r[1][-window:]]) * 1000
        rows.append([str(n), f"{rate:,.0f}"])
        cost_rows.append([str(n), f"{first:.2f}", f"{last:.2f}", f"{last / first:.2f}"])
        print(f"{n} streams: {rate:,.0f} words/s in process; first words {first:.2f} ms, last words {last:.2f} ms")
    if not args.no_http:
        proc, base = start_server(["--model", str(args.model)])
        try:
            over_http(base, 2, 3)  # warm-up
            for row, n in zip(rows, args.streams, strict=True):
                rate = median([over_http(base, n, args.words) for _ in range(args.repeats)])
                row.append(f"{rate:,.0f}")
                print(f"{n} streams: {rate:,.0f} words/s over HTTP")
        finally:
            stop_server(proc)
    header = ["streams", "words/s in process", *([] if args.no_http else ["words/s over HTTP"])]
    body = (
        f"Model `{ckpt.name}`, {args.words} words per stream (temperature 1), prompts: the first 5 words of PTB "
        f'test sentences in process, "the company said" over HTTP; median of {args.repeats} runs.\n\n'
        + table(header, rows)
        + f"\n\nThe cost of a generated word by its position (in process, one step of all streams, ms): the median "
        f"over {args.repeats} runs of words 1-{window} and of words {args.words - window + 1}-{args.words}. The "
        f"state is carried, so the last words cost what the first do.\n\n"
        + table(
            ["streams", f"words 1-{window} ms", f"words {args.words - window + 1}-{args.words} ms", "ratio"], cost_rows
        )
    )
    load = os.getloadavg()[0]
    body += (
        f"\n\nLoad average (1 minute) at the end of the run: {load:.1f} on {os.cpu_count()} CPUs: on a shared machine "
        "the absolute figures measure the contention as much as the model; the ratio is the point."
    )
    print(body)
    if not args.no_write:
        write_section("generation", "Generation speed", body)


if __name__ == "__main__":
    main()
