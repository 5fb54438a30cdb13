"""Command line: `python -m trainer {download,train,eval}` (also installed as `lm-trainer`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from lm.checkpoint import CheckpointError, load_checkpoint
from lm.model import resolve_device
from lm.normalize import whitespace_tokens
from lm.tokenizers import TOKENIZERS, TokenizerError, tokenizer_for
from lm.vocab import VocabularyError
from trainer.configs import CONFIGS, get_config
from trainer.data import SPLITS, default_data_dir
from trainer.errors import TrainerError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("download", help="fetch, verify and extract the PTB data (Mikolov's simple-examples)")
    d.add_argument("--out", type=Path, default=default_data_dir(), help="where to put ptb.{train,valid,test}.txt")
    d.add_argument("--url", default=None, help="archive URL (default: Mikolov's simple-examples.tgz)")
    d.add_argument("--sha256", default=None, help="expected sha256 of the archive itself, if you have one")

    t = sub.add_parser("train", help="train a configuration and keep its best-by-validation checkpoint")
    t.add_argument("--config", required=True, help=f"one of: {', '.join(CONFIGS)}")
    t.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory of {ptb.,}{train,valid,test}.txt[.gz] (default: $PTB_DATA_DIR, or data/ptb)",
    )
    t.add_argument("--train", type=Path, default=None, help="training text, one sentence per line (.gz too)")
    t.add_argument("--valid", type=Path, default=None, help="validation text (picks the best epoch)")
    t.add_argument("--test", type=Path, default=None, help="test text (optional)")
    t.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default=None,
        help="how lines become tokens, recorded in the checkpoint (default: ptb for ptb.*.txt files, else whitespace)",
    )
    t.add_argument("--lowercase", action="store_true", help="with --tokenizer words: lower-case the text")
    t.add_argument(
        "--vocab-size", type=int, default=None, help="keep the N most frequent words (<unk>, <eos> included)"
    )
    t.add_argument("--min-count", type=int, default=1, help="keep the words seen at least K times in training")
    t.add_argument(
        "--data-cache",
        type=Path,
        default=None,
        help="encode the splits into int32 files in DIR and train from them memory-mapped (corpora larger than "
        "memory); reused while the files, tokenizer and vocabulary options are unchanged",
    )
    t.add_argument("--batch-size", type=int, default=None, help="rows per step (per process under torchrun)")
    t.add_argument(
        "--adaptive-softmax", action="store_true", help="adaptive-softmax decoder (large vocabularies; no tying)"
    )
    t.add_argument(
        "--cutoffs",
        type=_cutoffs,
        default=None,
        help="with --adaptive-softmax: cluster boundaries, e.g. 2000,10000 (default: 2000,10000,50000 below V)",
    )
    t.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs")
    t.add_argument("--dry-run", action="store_true", help="one window of training, short evaluation")
    t.add_argument("--train-tokens", type=int, default=None, help="train on the first N tokens only")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    t.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for the training forward pass, log-softmax in float32 (default: as the config says)",
    )

    e = sub.add_parser("eval", help="perplexity of a PTB split, or per-sentence scores of a text file")
    e.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--split", choices=[*SPLITS, "all"], default=None, help="PTB split (default: test)")
    src.add_argument("--text", type=Path, default=None, help="a text file, one sentence per line")
    e.add_argument("--data-dir", type=Path, default=default_data_dir(), help="PTB directory ($PTB_DATA_DIR)")
    e.add_argument("--per-sentence", action="store_true", help="with --text: one line per sentence")
    e.add_argument(
        "--format",
        choices=["text", "jsonl", "srilm"],
        default="text",
        help="with --text: output format (srilm: `ngram -ppl`'s, as the HTTP client `lm-score` prints it)",
    )
    e.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --text: the model's own tokenizer on raw text, as the service does (PTB's normaliser for a PTB "
        "model; the default); --no-normalize splits on spaces",
    )
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    sc = sub.add_parser("sample-corpus", help="write a small real corpus (Python's own documentation) to train on")
    sc.add_argument("--out", type=Path, required=True, help="directory for train.txt, valid.txt, test.txt")
    pl = sub.add_parser("plot", help="one plot of the learning curves of several trained checkpoints")
    pl.add_argument("models", type=Path, nargs="+", help="checkpoint directories (each with train_log.jsonl)")
    pl.add_argument("--out", type=Path, required=True, help="PNG to write")
    return p


def _cutoffs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"cutoffs are comma-separated integers, not {text!r}") from None


def _sample_corpus(args: argparse.Namespace) -> None:
    from trainer.sample_corpus import write_sample_corpus

    for path in write_sample_corpus(args.out).values():
        print(path)


def _plot(args: argparse.Namespace) -> None:
    import json

    from trainer.plot import plot_learning_curves

    runs = {}
    for path in args.models:
        log = path / "train_log.jsonl"
        if not log.is_file():
            raise TrainerError(f"{log}: missing (is {path} a checkpoint written by the trainer?)")
        runs[path.name] = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
    plot_learning_curves(runs, args.out)
    print(args.out)


def _download(args: argparse.Namespace) -> None:
    from trainer.download import DEFAULT_URL, download_ptb

    paths = download_ptb(args.out, url=args.url or DEFAULT_URL, archive_sha256=args.sha256)
    for path in paths:
        print(path)


def _train(args: argparse.Namespace) -> None:
    from trainer import interrupt
    from trainer.train import RunOptions, train

    if args.lowercase and args.tokenizer != "words":
        raise TrainerError("--lowercase goes with --tokenizer words")
    if args.cutoffs is not None and not args.adaptive_softmax:
        raise TrainerError("--cutoffs goes with --adaptive-softmax")
    if args.batch_size is not None and args.batch_size < 1:
        raise TrainerError("--batch-size must be at least 1")
    config = get_config(
        args.config,
        bf16=args.bf16,
        batch_size=args.batch_size,
        adaptive_softmax=args.adaptive_softmax or None,
        cutoffs=args.cutoffs,
    )
    if args.max_epochs is not None and args.max_epochs < 1:
        raise TrainerError("--max-epochs must be at least 1")
    tokenizer = {"name": "words", "lowercase": args.lowercase} if args.tokenizer == "words" else args.tokenizer
    has_files = args.train is not None and args.valid is not None
    opts = RunOptions(
        data_dir=args.data_dir if args.data_dir is not None or has_files else default_data_dir(),
        out=args.out,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
        max_epochs=args.max_epochs,
        dry_run=args.dry_run,
        train_tokens=args.train_tokens,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
        train_file=args.train,
        valid_file=args.valid,
        test_file=args.test,
        tokenizer=tokenizer,
        vocab_size=args.vocab_size,
        min_count=args.min_count,
        data_cache=args.data_cache,
    )
    try:
        with interrupt.stopping():
            train(config, opts)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the current epoch is lost, finished epochs are kept in {args.out}; continue with "
            "the same command and --resume",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


def _eval(args: argparse.Namespace) -> None:
    from trainer.evaluate import evaluate_split, score_file

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise TrainerError(f"--{e}") from None
    ckpt = load_checkpoint(args.model)
    ckpt.model.to(device)
    if args.text is not None:
        tokenize = tokenizer_for(ckpt).tokenize if args.normalize else whitespace_tokens
        score_file(ckpt, args.text, args.per_sentence, args.format, tokenize=tokenize, progress=args.progress)
        return
    splits = SPLITS if args.split == "all" else [args.split or "test"]
    for split in splits:
        r = evaluate_split(ckpt, args.data_dir, split)
        print(
            f"{split}: perplexity {r.perplexity:.3f} over {r.predictions:,} predictions"
            f" ({r.nll_nats / r.predictions:.4f} nats/prediction)"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {
            "download": _download,
            "train": _train,
            "eval": _eval,
            "plot": _plot,
            "sample-corpus": _sample_corpus,
        }
        commands[args.command](args)
    except (TrainerError, CheckpointError, VocabularyError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(
            f"error: {e.filename}: not writable by uid {os.getuid()}; give it write access (under docker compose: "
            f'TRAINER_USER="$(id -u):$(id -g)" for a ./models you own)',
            file=sys.stderr,
        )
        return 2
    except OSError as e:
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    return 0
