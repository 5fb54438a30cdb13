"""Can bf16 be the service's default? Every PTB test prediction in float32 and in bf16, compared.

    python -m benchmarks.bf16_accuracy                 # models/ptb-cpu, the whole PTB test set
    python -m benchmarks.bf16_accuracy --sentences 50 --no-write

bf16 here is what `LMSERVE_DTYPE=bfloat16` serves: weights and activations in bf16, the log-softmax in float32.
Two views of the test set, each in both dtypes:

- as `/score` computes it: each test sentence on its own (`<eos>` + words + `<eos>`), in batches through
  `ModelRunner.run`; every per-token log-probability compared, and the perplexity of all of them;
- as the trainer evaluates it (DESIGN's perplexity): the whole split as one stream, the state carried.

The bar for making bf16 the default: the test perplexity moves by less than 0.05% and no token's log-probability
by more than 0.1 nats.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_DATA_DIR, REPO, table, write_section
from benchmarks.engine import DTYPE_NAMES, all_logprobs, sentences_ids
from lm.checkpoint import load_checkpoint
from lm.scoring import token_logprobs
from service.runner import ModelRunner
from service.settings import Settings

MAX_PPL_CHANGE = 0.0005  # relative
MAX_TOKEN_DIFF = 0.1  # nats


def stream_logprobs(runner: ModelRunner, data_dir: Path) -> torch.Tensor:
    """Per-token log-probabilities of ptb.test.txt as one stream (every line ends with <eos>), state carried."""
    vocab = runner.vocab
    words = (Path(data_dir) / "ptb.test.txt").read_text(encoding="utf-8").replace("\n", " <eos> ").split()
    ids = [vocab.eos_id, *vocab.encode(words)]
    return token_logprobs(runner.model, [ids], runner.max_chunk_tokens)[0].double()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "ptb-cpu"))
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--sentences", type=int, default=None, help="only the first N (shuffled) test sentences")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    runners = {
        d: ModelRunner(load_checkpoint(args.model), Settings(model=args.model, device="cpu", dtype=DTYPE_NAMES[d]))
        for d in ("fp32", "bf16")
    }
    seqs = sentences_ids(runners["fp32"].ckpt, args.data_dir, args.sentences)
    views = {"sentences (as /score)": {d: all_logprobs(r, seqs) for d, r in runners.items()}}
    if args.sentences is None:
        views["stream (as the trainer)"] = {d: stream_logprobs(r, args.data_dir) for d, r in runners.items()}
    rows, verdicts = [], []
    for name, lp in views.items():
        diff = (lp["fp32"] - lp["bf16"]).abs()
        ppl = {d: math.exp(-v.mean().item()) for d, v in lp.items()}
        change = ppl["bf16"] / ppl["fp32"] - 1
        worst = int(diff.argmax())
        over = int((diff > MAX_TOKEN_DIFF).sum())
        rows.append(
            [
                name,
                f"{diff.numel():,}",
                f"{ppl['fp32']:.3f}",
                f"{ppl['bf16']:.3f}",
                f"{change:+.3%}",
                f"{diff.max().item():.4f}",
                f"{diff.mean().item():.4f}",
                f"{over:,}",
                f"{lp['fp32'][worst].item():.3f} / {lp['bf16'][worst].item():.3f}",
            ]
        )
        verdicts.append(abs(change) < MAX_PPL_CHANGE and diff.max().item() <= MAX_TOKEN_DIFF)
        print("  ".join(rows[-1]), flush=True)
    header = [
        "view",
        "predictions",
        "fp32 ppl",
        "bf16 ppl",
        "ppl change",
        "max diff (nats)",
        "mean diff",
        "tokens > 0.1 nats",
        "worst token fp32 / bf16",
    ]
    verdict = (
        "**bf16 meets the bar**: it can be the default where the CPU has native bf16."
        if all(verdicts)
        else "**bf16 misses the bar** (perplexity within 0.05% and every token within 0.1 nats): float32 stays the "
        "default; bf16 remains an option (`LMSERVE_DTYPE=bfloat16`)."
    )
    body = (
        f"Model `{runners['fp32'].ckpt.name}`; bf16 weights and activations, float32 log-softmax (what "
        "`LMSERVE_DTYPE=bfloat16` serves) against float32, on "
        f"{'the whole PTB test set' if args.sentences is None else f'{len(seqs)} PTB test sentences'}.\n\n"
        + table(header, rows)
        + "\n\n"
        + verdict
    )
    print(body)
    if not args.no_write:
        write_section("bf16", "bf16 against float32, every test prediction", body)


if __name__ == "__main__":
    main()
