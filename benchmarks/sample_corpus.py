"""The sample corpus's results table: the trainer run once per tokenizer, the table read from each config.json.

    python -m benchmarks.sample_corpus                       # 3 epochs of `small` per tokenizer, 1 thread
    python -m benchmarks.sample_corpus --epochs 1 --train-tokens 5000 --out /tmp/pydoc-runs   # a quick look

Writes Python's own documentation with `python -m trainer sample-corpus` into `OUT/data`, trains
`python -m trainer train --config small --data-dir OUT/data --tokenizer T --min-count 2 --max-epochs 3
--threads 1 --out OUT/pydoc-NAME` for each row (`whitespace`, `words`, `words --lowercase`), and prints the
Markdown table of docs/training-your-own.md from each checkpoint's `config.json`: vocabulary, `<unk>` tokens
per split (`training.unk_tokens`, out of each split's stream), best epoch, valid and test perplexity.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from benchmarks.common import table
from trainer.cli import main as trainer_main

RUNS = {
    "whitespace": ["--tokenizer", "whitespace"],
    "words": ["--tokenizer", "words"],
    "words-lowercase": ["--tokenizer", "words", "--lowercase"],
}


def train_row(name: str, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train one row's model with the trainer's own command line; returns its config.json."""
    argv = ["train", "--config", args.config, "--data-dir", str(data), *RUNS[name], "--min-count", str(args.min_count)]
    argv += ["--max-epochs", str(args.epochs), "--threads", str(args.threads), "--seed", str(args.seed)]
    argv += ["--out", str(out), "--overwrite", "--no-progress"]
    if args.train_tokens:
        argv += ["--train-tokens", str(args.train_tokens)]
    print("python -m trainer " + " ".join(argv), flush=True)
    if trainer_main(argv) != 0:
        raise SystemExit(f"{name}: training failed")
    return json.loads((out / "config.json").read_text(encoding="utf-8"))


def row(name: str, meta: dict) -> list[str]:
    """A table row: the tokenizer as its options were given, and what the checkpoint records."""
    unk, m = meta["training"]["unk_tokens"], meta["metrics"]
    sizes = [meta["training"]["train_tokens"], m["valid_predictions"] + 1, m["test_predictions"] + 1]
    label = "`" + " ".join(RUNS[name][1:]) + "`"
    return [
        label,
        f"{meta['vocab_size']:,}",
        " / ".join(f"{unk[s]:,}" for s in ("train", "valid", "test")) + f" (of {' / '.join(f'{n:,}' for n in sizes)})",
        str(m["best_epoch"]),
        f"{m['valid_ppl']:.2f}",
        f"{m['test_ppl']:.2f}",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/pydoc"), help="corpus and one run per row")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="the rows to train")
    p.add_argument("--config", default="small")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--min-count", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--train-tokens", type=int, default=None, help="train on the first N tokens only")
    args = p.parse_args(argv)

    data = args.out / "data"
    if trainer_main(["sample-corpus", "--out", str(data)]) != 0:
        raise SystemExit("could not write the sample corpus")
    rows = [row(name, train_row(name, data, args.out / f"pydoc-{name}", args)) for name in args.runs]
    header = ["tokenizer", f"vocabulary (min count {args.min_count})", "`<unk>` train / valid / test"]
    header += ["best epoch", "valid ppl", "test ppl"]
    print(f"\n{args.epochs} epochs of `{args.config}`, {args.threads} thread(s), Python {platform.python_version()}")
    print(table(header, rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
