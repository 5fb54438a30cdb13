"""Adaptive softmax against the full softmax with a 50,000-word vocabulary: training speed and perplexity.

    python -m benchmarks.adaptive                   # about 6 to 7 minutes on a quiet 2-core CPU; writes its section
    python -m benchmarks.adaptive --train-tokens 4000 --valid-tokens 2000 --no-write   # a quick look

Both models are the trainer's own (`python -m trainer train --config small --vocab-size 50000`, with and
without `--adaptive-softmax`, default cutoffs 2,000 and 10,000), trained on the same first 100,000 tokens
(one epoch; `--epochs` for more) from the same seed, then evaluated on the same held-out text from the same
generator with the full-vocabulary distribution (`LSTMLanguageModel.log_probs`). Training tokens/s is the
trainer's own figure for the last epoch; each model's wall and CPU seconds are printed (on a quiet machine at
one thread they agree; CPU far below wall means the machine was shared).

The text is generated (no download is possible here, and no text on this machine has 50,000 word types:
Python's documentation has about 9,000): each sentence is words drawn from a Zipf law (s = 1.0, 200,000
types), where after word w the next word is, half the time, w's fixed successor (itself drawn once from the
same law) and otherwise a fresh draw. The unigram law stays Zipfian, as in real text (the adaptive softmax's
premise), and there is context to learn, so perplexity means something: 100,000 training tokens show the
~1,000 most frequent words (58% of the tokens) about 8 times or more each, enough to learn their successors.

Wall time, estimated from CPU seconds at one thread (AMD EPYC, AVX2, measured while the machine was shared;
on a quiet machine CPU seconds are wall seconds): a training token costs 2.6 ms with the full softmax and 0.5
ms with the adaptive one (a Zipfian batch of `small`, 20 x 20), an evaluated token 1.1 ms with either (both
give the full distribution; the trainer evaluates the validation text twice, after the epoch and from the
saved checkpoint). A run with `--train-tokens 4000` and 20,000 validation tokens took 124 CPU seconds in
all: less 88 s of evaluation and 12 s of training, about 25 s generate the text and count and encode it for
each model. So the defaults take about 25 + 44 + 100,000 x 3.1 ms = 380 s, 6 to 7 minutes; `--train-tokens
200000` about 11 minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import table, write_section, write_zipf_text
from lm.checkpoint import load_checkpoint
from trainer.configs import get_config
from trainer.train import RunOptions, train

WORD_TYPES = 200_000


def run(tmp: Path, adaptive: bool, train_tokens: int, vocab_size: int, threads: int, epochs: int) -> dict:
    """Train and evaluate one model with the trainer; its metrics, last epoch's record, size and times."""
    config = get_config("small", max_epochs=epochs, adaptive_softmax=adaptive or None)
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
    t0, cpu0 = time.perf_counter(), time.process_time()
    metrics = train(config, opts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    record = json.loads((out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    print(f"{'adaptive' if adaptive else 'full'}: {wall:.0f} s wall, {cpu:.0f} s CPU (reading, training, evaluating)")
    size = load_checkpoint(out).model.num_parameters()
    return {**metrics, **record, "parameters": size, "meta": meta, "wall": wall, "cpu": cpu}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-tokens", type=int, default=100_000, help="training tokens of an epoch")
    p.add_argument("--epochs", type=int, default=1, help="epochs over those tokens")
    p.add_argument("--corpus-tokens", type=int, default=1_000_000, help="training text the vocabulary is counted on")
    p.add_argument("--valid-tokens", type=int, default=10_000, help="held-out text from the same generator")
    p.add_argument("--vocab-size", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # Enough text that the vocabulary fills up: counted over --corpus-tokens, trained on the first ones.
        t0 = time.perf_counter()
        for name, tokens, seed in (("train.txt", args.corpus_tokens, 0), ("valid.txt", args.valid_tokens, 1)):
            write_zipf_text(tmp / name, tokens, seed=seed, s=1.0, types=WORD_TYPES, lengths=(5, 30), successor_p=0.5)
        print(f"generated the text in {time.perf_counter() - t0:.0f} s")
        full = run(tmp, False, args.train_tokens, args.vocab_size, args.threads, args.epochs)
        ada = run(tmp, True, args.train_tokens, args.vocab_size, args.threads, args.epochs)

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
                f"{r['wall']:.0f} / {r['cpu']:.0f}",
            ]
        )
    speedup = ada["train_tokens_per_s"] / full["train_tokens_per_s"]
    cost = ada["valid_ppl"] / full["valid_ppl"] - 1
    header = ["decoder", "parameters", "train tokens/s", "train ppl", "valid ppl", "wall / CPU s"]
    body = (
        f"Config `small` (2 x 200 LSTM, 20 x 20 windows), vocabulary {args.vocab_size:,} words, {args.epochs} "
        f"epoch(s) over {full['meta']['training']['train_tokens']:,} training tokens of generated text (the "
        f"vocabulary counted on {args.corpus_tokens:,}; see the script's docstring: why generated, and how), "
        f"valid {full['valid_predictions']:,} predictions of held-out text from the same generator; <unk> tokens: "
        f"train {unk['train']:,}, valid {unk['valid']:,}. {args.threads} torch thread(s).\n\n"
        + table(header, rows)
        + f"\n\nAdaptive softmax: **{speedup:.2f}x** the training tokens/s (target >= 2.5x), valid perplexity "
        f"**{cost:+.1%}** against the full softmax (target <= +3%). One run each, back to back, same data and "
        "seed. Wall / CPU seconds are each model's whole run (reading, training, evaluating): where CPU is well "
        "below wall the machine was shared and the tokens/s ratio is indicative only. The perplexities compare "
        "the two decoders after the same training tokens, not at convergence."
    )
    print(body)
    if not args.no_write:
        write_section("adaptive", "Adaptive softmax with a 50,000-word vocabulary", body)


if __name__ == "__main__":
    main()
