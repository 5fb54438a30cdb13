"""Adaptive softmax against the full softmax with a 50,000-word vocabulary: training speed and perplexity.

    python -m benchmarks.adaptive                   # writes its section of docs/benchmarks.md
    python -m benchmarks.adaptive --train-tokens 20000 --no-write

Both models are the trainer's own (`python -m trainer train --config small --vocab-size 50000`, with and
without `--adaptive-softmax`, default cutoffs 2,000 and 10,000), trained one epoch on the same tokens from the
same seed, then evaluated on the same validation text with the full-vocabulary distribution
(`LSTMLanguageModel.log_probs`). Training tokens/s is the trainer's own figure for that epoch.

The text is generated (no download is possible here, and no text on this machine has 50,000 word types:
Python's documentation has about 9,000): each sentence is words drawn from a Zipf law (s = 1.0, 200,000
types), where after word w the next word is, half the time, w's fixed successor (itself drawn once from the
same law) and otherwise a fresh draw. The unigram law stays Zipfian, as in real text (the adaptive softmax's
premise), and there is context to learn, so perplexity means something.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import table, write_section, write_zipf_text
from lm.checkpoint import load_checkpoint
from trainer.configs import get_config
from trainer.train import RunOptions, train

WORD_TYPES = 200_000


def run(tmp: Path, adaptive: bool, train_tokens: int, vocab_size: int, threads: int) -> dict:
    config = get_config("small", max_epochs=1, adaptive_softmax=adaptive or None)
    out = tmp / ("adaptive" if adaptive else "full")
    opts = RunOptions(
        data_dir=None,
        out=out,
        device="cpu",
        threads=threads,
        train_file=tmp / "train.txt",
        valid_file=tmp / "valid.txt",
        vocab_size=vocab_size,
        train_tokens=train_tokens,
        progress=False,
        log=lambda msg: print(("adaptive: " if adaptive else "full: ") + msg),
    )
    metrics = train(config, opts)
    record = json.loads((out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()[0])
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    return {**metrics, **record, "parameters": load_checkpoint(out).model.num_parameters(), "meta": meta}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-tokens", type=int, default=40_000, help="training tokens of the one epoch")
    p.add_argument("--corpus-tokens", type=int, default=1_000_000, help="training text the vocabulary is counted on")
    p.add_argument("--valid-tokens", type=int, default=20_000)
    p.add_argument("--vocab-size", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # Enough text that the vocabulary fills up: counted over --corpus-tokens, trained on the first ones.
        for name, tokens, seed in (("train.txt", args.corpus_tokens, 0), ("valid.txt", args.valid_tokens, 1)):
            write_zipf_text(tmp / name, tokens, seed=seed, s=1.0, types=WORD_TYPES, lengths=(5, 30), successor_p=0.5)
        full = run(tmp, False, args.train_tokens, args.vocab_size, args.threads)
        ada = run(tmp, True, args.train_tokens, args.vocab_size, args.threads)

    unk = full["meta"]["training"]["unk_tokens"]
    rows = []
    for name, r in (("full softmax", full), (f"adaptive, cutoffs {ada['meta']['adaptive_cutoffs']}", ada)):
        rows.append(
            [
                name,
                f"{r['parameters']:,}",
                f"{r['train_tokens_per_s']:,.0f}",
                f"{r['train_ppl']:.1f}",
                f"{r['valid_ppl']:.1f}",
            ]
        )
    speedup = ada["train_tokens_per_s"] / full["train_tokens_per_s"]
    cost = ada["valid_ppl"] / full["valid_ppl"] - 1
    body = (
        f"Config `small` (2 x 200 LSTM, 20 x 20 windows), vocabulary {args.vocab_size:,} words, one epoch over "
        f"{full['meta']['training']['train_tokens']:,} training tokens of generated text (the vocabulary counted "
        f"on {args.corpus_tokens:,}; see the script's "
        f"docstring: why generated, and how), valid {full['valid_predictions']:,} predictions; <unk> tokens: "
        f"train {unk['train']:,}, valid {unk['valid']:,}. {args.threads} torch thread(s).\n\n"
        + table(["decoder", "parameters", "train tokens/s", "train ppl", "valid ppl"], rows)
        + f"\n\nAdaptive softmax: **{speedup:.2f}x** the training tokens/s (target >= 2.5x), valid perplexity "
        f"**{cost:+.1%}** against the full softmax (target <= +3%). One run each, back to back, same data, on a "
        "2-core machine shared with other work: tokens/s swing with the machine's load, so read the ratio as "
        "indicative; after a short epoch the perplexities say little about the final cost (a run of a few "
        "hundred thousand tokens, `--train-tokens 200000`, on a quiet machine is what the +3% target needs)."
    )
    print(body)
    if not args.no_write:
        write_section("adaptive", "Adaptive softmax with a 50,000-word vocabulary", body)


if __name__ == "__main__":
    main()
