"""Evaluation: stream perplexity of a PTB split, and per-sentence scoring of a text file (like `ngram -ppl`).

python -m trainer eval --model models/ptb-small --data-dir ../shared/data/ptb --split test
python -m trainer eval --model models/ptb-small --text sentences.txt --per-sentence
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from lm.checkpoint import Checkpoint
from lm.encoding import Encoded, SentenceEncoder
from lm.report import PerplexityTally, jsonl_summary, srilm_sentence, srilm_summary
from lm.scoring import LN10, perplexity, score_tokens, stream_nll
from lm.tokenizers import tokenizer_for
from trainer.data import encode_file, split_path
from trainer.errors import TrainerError


@dataclass
class SplitResult:
    split: str
    perplexity: float
    nll_nats: float
    predictions: int


def evaluate_split(ckpt: Checkpoint, data_dir: str | Path, split: str) -> SplitResult:
    """Perplexity of a split as one stream, state carried from the first token to the last (docs/architecture.md).

    The split is read as the checkpoint's training text was: its tokenizer, and its vocabulary closed (an
    unknown word is an error) or open (an unknown word is `<unk>`) as in training."""
    ids = encode_file(split_path(data_dir, split), ckpt.vocab, tokenizer_for(ckpt), closed_vocabulary(ckpt)).ids
    nll, n = stream_nll(ckpt.model, ids.to(ckpt.model.embedding.weight.device))
    return SplitResult(split, perplexity(-nll, n), nll, n)


def closed_vocabulary(ckpt: Checkpoint) -> bool:
    """Whether the vocabulary is every training word (PTB's way: an unknown word in a split is an error),
    rather than limited by --vocab-size / --min-count (unknown words are `<unk>`, as in training)."""
    return ckpt.training.get("vocab_size_limit") is None and ckpt.training.get("min_count", 1) <= 1


@dataclass
class SentenceScore:
    text: str
    tokens: list[str]  # as the model saw them, the priming <eos> excluded, the final <eos> included
    oov: list[str]
    logprob: float  # natural log
    num_tokens: int  # predictions

    @property
    def log10prob(self) -> float:
        return self.logprob / LN10

    @property
    def perplexity(self) -> float:
        return perplexity(self.logprob, self.num_tokens)


def score_lines(
    ckpt: Checkpoint,
    lines: Iterable[str],
    tokenize: Callable[[str], list[str]] = str.split,
    batch_size: int = 64,
) -> Iterator[SentenceScore]:
    """Score each non-blank line as a sentence (`lm.encoding`: `<eos>`-primed, every word and the final `<eos>`
    predicted)."""
    encoder = SentenceEncoder.for_checkpoint(ckpt)
    pending: list[tuple[str, Encoded]] = []

    def flush() -> Iterator[SentenceScore]:
        seqs = [e.ids for _, e in pending]
        for (text, e), scores in zip(pending, score_tokens(ckpt.model, seqs), strict=True):
            yield SentenceScore(text, e.tokens, e.oov, scores.total, scores.logprobs.numel())
        pending.clear()

    for line in lines:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        # A line that normalises to nothing still ends a sentence: its <eos> is predicted, as /score does.
        pending.append((text, encoder.encode(tokenize(text), add_eos=True)))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def score_file(
    ckpt: Checkpoint,
    path: Path,
    per_sentence: bool,
    fmt: str = "text",
    tokenize: Callable[[str], list[str]] = str.split,
    out: TextIO | None = None,
    progress: bool | None = None,
) -> dict:
    """Score every line of `path`; print one line per sentence if asked, then a summary. Returns the summary.

    `out` defaults to the current `sys.stdout` (looked up at call time, so that redirection is honoured).
    """
    if out is None:
        out = sys.stdout
    try:
        with path.open(encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainerError(f"{path}: cannot read ({e})") from None
    tally = PerplexityTally()
    bar = tqdm(total=len(lines), unit="line", disable=(not progress) if progress is not None else None, leave=False)
    for s in score_lines(ckpt, lines, tokenize):
        bar.update(1)
        row = tally.add(s.text, s.num_tokens, s.oov, s.logprob)
        if per_sentence:
            if fmt == "jsonl":
                print(json.dumps(row), file=out)
            elif fmt == "srilm":
                print(srilm_sentence(row), file=out)
            else:
                print(
                    f"logprob {s.logprob:10.3f}  log10prob {s.log10prob:9.3f}  ppl {s.perplexity:9.2f}"
                    f"  tokens {s.num_tokens:3d}  oov {len(s.oov):2d}  {s.text}",
                    file=out,
                )
    bar.close()
    if tally.sentences == 0:
        raise TrainerError(f"{path}: no sentences (every line is empty)")
    summary = tally.summary(str(path))
    if fmt == "jsonl":
        print(jsonl_summary(summary), file=out)
    elif fmt == "srilm":
        print(srilm_summary(summary), file=out)
    else:
        print(
            f"file {path}: {tally.sentences:,} sentences, {tally.words:,} words, {tally.oov:,} OOVs (scored as <unk>)\n"
            f"logprob {tally.logprob:.3f}  log10prob {tally.logprob / LN10:.3f}  predictions {tally.num_tokens:,}"
            f"  ppl {summary['perplexity']:.3f}",
            file=out,
        )
    return summary
