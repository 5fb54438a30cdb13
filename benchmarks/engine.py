"""Engine throughput, in process (no HTTP): the service's forward pass over PTB test sentences.

    python benchmarks/engine.py                  # the served model (models/ptb-cpu), fp32 and bf16
    python benchmarks/engine.py --batches 1 32 --repeats 1 --no-write
    python -m benchmarks.engine --device cuda --model runs/gpu/models/ptb-large --batches 1 32 512 --no-write

Each PTB test sentence becomes what `/score` queues for it (`<eos>` + its words + `<eos>`); batches of
consecutive sentences from a fixed shuffle go through `ModelRunner.run`, the function the batching engine calls
(sorting, padding, chunked LSTM, float32 log-softmax, the NaN check; ranks are not asked for, as `/score`
without per_token). Tokens/s counts predictions; the figure is the median of `--repeats` passes over
`--sentences` sentences. GFLOP/s counts the forward matmuls (LSTM gates and the decoder); the ceiling is the
best of the decoder's and the LSTM input projection's matmuls at 4096 rows, in the same dtype and on the same
device (`--device`: cpu, cuda or auto), measured in this run.

bf16 vs fp32: the largest difference of any per-token log-probability over the sentences, and the perplexity
of the sentences in each dtype.

Type-ahead: every prefix of a sentence, word by word ("the", "the stock", ...), as single `/next-word`
requests would ask, with the prefix-state cache on and off; milliseconds per prefix, and the speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from benchmarks.common import (
    DEFAULT_DATA_DIR,
    DTYPES,
    REPO,
    ceiling_gflops,
    lstm_forward_flops,
    median,
    model_matmul_shapes,
    ptb_test_sentences,
    table,
    write_section,
)
from lm.checkpoint import load_checkpoint
from lm.encoding import SentenceEncoder
from lm.model import native_bf16, resolve_device
from service.runner import ModelRunner, NextJob, ScoreJob
from service.settings import Settings

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}


def sentences_ids(ckpt, data_dir, limit: int | None, seed: int = 0) -> list[list[int]]:
    encoder = SentenceEncoder.for_checkpoint(ckpt)
    lines = [line.split() for line in ptb_test_sentences(data_dir)]
    random.Random(seed).shuffle(lines)
    lines = lines[:limit] if limit else lines
    return [encoder.encode(words, add_eos=True).ids for words in lines]


def score_jobs(seqs: list[list[int]]) -> list[ScoreJob]:
    return [ScoreJob(ids) for ids in seqs]


def throughput(
    runner: ModelRunner, seqs: list[list[int]], batch: int, repeats: int, lanes: int = 1, threads: int | None = None
) -> float:
    """Median tokens/s over `repeats` passes of all `seqs` in batches of `batch`; with `lanes` > 1, as the
    service's forward lanes run under load: that many threads side by side, each running every lanes-th batch
    with the lane's share of the torch threads. `threads`: each pass runs with that many torch threads instead
    (one, as each of `LMSERVE_WORKERS=2 LMSERVE_THREADS=1`'s workers runs).

    With lanes, every lane runs the same number of full batches (the sentences left over are not run): a lane
    with one batch more would run it alone at the end, on a machine half idle, and the rate would be that much
    lower than that of lanes side by side."""
    batches = [score_jobs(seqs[i : i + batch]) for i in range(0, len(seqs), batch)]
    if lanes > 1:
        full = [b for b in batches if len(b) == batch]
        if len(full) >= lanes:
            batches = full[: len(full) // lanes * lanes]
    predictions = sum(len(job.ids) - 1 for b in batches for job in b)

    def lane(part: list[list[ScoreJob]]) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        elif lanes > 1:
            runner.lane_width(False)
        for b in part:
            runner.run(b)

    saved = torch.get_num_threads()
    with ThreadPoolExecutor(lanes) as pool:

        def run(parts: list[list[list[ScoreJob]]]) -> None:
            if lanes == 1:
                lane(parts[0])  # in this thread, with its threads
            else:
                list(pool.map(lane, parts))

        try:
            run([batches[:1]] * lanes)  # warm-up, in every lane
            rates = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run([batches[k::lanes] for k in range(lanes)])
                rates.append(predictions / (time.perf_counter() - t0))
        finally:
            torch.set_num_threads(saved)
    return median(rates)


def all_logprobs(runner: ModelRunner, seqs: list[list[int]], batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(seqs), batch):
        out += [r.logprobs for r in runner.run(score_jobs(seqs[i : i + batch]))]
    return torch.cat(out).double()


@contextlib.contextmanager
def prefix_cache(runner: ModelRunner, on: bool) -> Iterator[None]:
    """The runner's prefix-state cache on (as configured) or off, empty on entry and on exit."""
    saved = runner.prefix_cache.max_entries
    runner.prefix_cache.max_entries = saved if on else 0
    runner.prefix_cache.clear()
    try:
        yield
    finally:
        runner.prefix_cache.max_entries = saved
        runner.prefix_cache.clear()


def type_ahead(runner: ModelRunner, seqs: list[list[int]], cache: bool, repeats: int) -> float:
    """Median over repeats of the mean milliseconds per prefix, every prefix of every sentence in turn."""
    prefixes = [ids[:n] for ids in seqs for n in range(1, len(ids))]  # <eos>, <eos> w1, <eos> w1 w2, ...
    times = []
    with prefix_cache(runner, cache):
        for _ in range(repeats):
            runner.prefix_cache.clear()
            t0 = time.perf_counter()
            for p in prefixes:
                runner.run([NextJob(p)])
            times.append((time.perf_counter() - t0) / len(prefixes) * 1000)
    return median(times)


def next_after_extension(runner: ModelRunner, doc: list[int], length: int, cache: bool, repeats: int) -> float:
    """Median milliseconds of `/next-word`'s pass for doc[: length + 1] when doc[:length] was asked just before."""
    times = []
    with prefix_cache(runner, cache):
        for _ in range(repeats):
            runner.prefix_cache.clear()
            runner.run([NextJob(doc[:length])])
            t0 = time.perf_counter()
            runner.run([NextJob(doc[: length + 1])])
            times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "ptb-cpu"))
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, type=lambda s: __import__("pathlib").Path(s))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128, 512])
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(DTYPE_NAMES),
        help="default: fp32, and bf16 where the device runs it natively (emulated bf16 only measures emulation)",
    )
    p.add_argument("--sentences", type=int, default=1024, help="test sentences per pass (batch 1: a quarter)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--type-ahead-sentences", type=int, default=20)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ["fp32", "bf16"] if native_bf16(resolve_device(args.device).type) else ["fp32"]

    ckpt = load_checkpoint(args.model)
    cfg = ckpt.config
    v, h = cfg.vocab_size, cfg.hidden_size
    flops = lstm_forward_flops(v, cfg.embed_size, h, cfg.num_layers)
    seqs = sentences_ids(ckpt, args.data_dir, args.sentences)
    mean_len = sum(len(s) - 1 for s in seqs) / len(seqs)
    print(f"{ckpt.name}: {len(seqs)} sentences, {mean_len:.1f} predictions each; {flops / 1e6:.2f} MFLOP/token")

    # One checkpoint per dtype: the runner casts its model in place.
    runners = {
        d: ModelRunner(
            load_checkpoint(args.model), Settings(model=args.model, device=args.device, dtype=DTYPE_NAMES[d])
        )
        for d in args.dtypes
    }
    device = next(iter(runners.values())).device
    print(f"device {device}")
    shapes = model_matmul_shapes(4096, v, cfg.embed_size, h, training=False)
    ceilings = {d: ceiling_gflops(shapes, DTYPES[d], device)[0] for d in args.dtypes}
    rows = []
    for batch in args.batches:
        subset = seqs if batch > 1 else seqs[: max(1, len(seqs) // 4)]
        row = [str(batch)]
        for d in args.dtypes:
            tps = throughput(runners[d], subset, batch, args.repeats)
            gflops = tps * flops / 1e9
            row += [f"{tps:,.0f}", f"{gflops:.0f}", f"{gflops / ceilings[d]:.0%}"]
        rows.append(row)
        print("  ".join(row), flush=True)
    header = ["batch"] + [f"{d} {col}" for d in args.dtypes for col in ("tokens/s", "GFLOP/s", "of ceiling")]
    ceiling_line = ", ".join(f"{d} {ceilings[d]:.0f} GFLOP/s" for d in args.dtypes)
    body = (
        f"Model `{ckpt.name}` on {device} ({ckpt.model.num_parameters():,} parameters, "
        f"{flops / 1e6:.2f} MFLOP per token), "
        f"{len(seqs)} PTB test sentences ({mean_len:.1f} predictions each; batch 1: the first quarter), median "
        f"of {args.repeats} passes. Ceiling (best of the (4096, {h}) @ ({h}, {v}) decoder and the "
        f"(4096, {cfg.embed_size}) @ ({cfg.embed_size}, {4 * h}) LSTM input matmuls): {ceiling_line}.\n\n"
        + table(header, rows)
    )
    if {"fp32", "bf16"} <= set(args.dtypes):
        lp32 = all_logprobs(runners["fp32"], seqs)
        lp16 = all_logprobs(runners["bf16"], seqs)
        diff = (lp32 - lp16).abs()
        ppl32, ppl16 = math.exp(-lp32.mean().item()), math.exp(-lp16.mean().item())
        line = (
            f"bf16 vs fp32 over {lp32.numel():,} per-token log-probabilities: largest difference "
            f"{diff.max().item():.4f} nats, mean {diff.mean().item():.4f}; perplexity of these sentences "
            f"{ppl32:.3f} (fp32) vs {ppl16:.3f} (bf16)."
        )
        body += "\n\n" + line
    ta = seqs[: args.type_ahead_sentences]
    runner = runners[args.dtypes[0]]
    off = type_ahead(runner, ta, cache=False, repeats=args.repeats)
    on = type_ahead(runner, ta, cache=True, repeats=args.repeats)
    n_prefixes = sum(len(s) - 1 for s in ta)
    line = (
        f"Type-ahead ({args.dtypes[0]}): every prefix of {len(ta)} test sentences word by word ({n_prefixes} "
        f"single-prefix passes, mean prefix {sum(len(s) * (len(s) - 1) / 2 for s in ta) / n_prefixes:.1f} "
        f"tokens): {off:.2f} ms per prefix without the prefix-state cache, {on:.2f} ms with it: "
        f"**{off / on:.1f}x** faster."
    )
    body += "\n\n" + line
    doc = [t for ids in seqs for t in ids[:-1]]  # test sentences end to end, one <eos> between each
    rows = []
    for length in (8, 64, 512, 2048):
        if length + 1 > len(doc):
            break
        off = next_after_extension(runner, doc, length, cache=False, repeats=args.repeats + 2)
        on = next_after_extension(runner, doc, length, cache=True, repeats=args.repeats + 2)
        rows.append([str(length), f"{off:.2f}", f"{on:.2f}", f"{off / on:.1f}x"])
    body += (
        "\n\nOne more word typed after a prefix of n tokens (test sentences end to end), the forward pass of "
        f"the longer prefix, median of {args.repeats + 2}:\n\n"
        + table(["prefix tokens", "no cache ms", "cache ms", "speed-up"], rows)
    )
    print(body)
    if not args.no_write:
        write_section("engine", "Engine throughput (in process)", body)


if __name__ == "__main__":
    main()
