"""PTB reading and the TF tutorial's batching.

Each line of a PTB file is a sentence of space-separated tokens; the reader appends `<eos>` to every line and
concatenates the lines into one token stream. Ids come from the training split's vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lm.vocab import EOS, UNK, Vocabulary
from trainer.errors import TrainerError

SPLITS = ("train", "valid", "test")
DATA_DIR_ENV = "PTB_DATA_DIR"


def default_data_dir() -> Path:
    """`$PTB_DATA_DIR` if set, else `data/ptb` (where `python -m trainer download` puts the files)."""
    return Path(os.environ.get(DATA_DIR_ENV, "data/ptb"))


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"ptb.{split}.txt"


def read_words(path: str | Path) -> list[str]:
    """The file's tokens as one stream, `<eos>` after every line."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"{path}: no such file (get PTB with: python -m trainer download --out {path.parent})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrainerError(f"{path}: cannot read ({e})") from None
    words: list[str] = []
    for line in text.splitlines():
        words.extend(line.split())
        words.append(EOS)
    if len(words) < 2:
        raise TrainerError(f"{path}: too few tokens to train or evaluate on")
    return words


def encode_split(path: str | Path, vocab: Vocabulary) -> Tensor:
    """Token ids of a split; every word must be in `vocab` (PTB's valid and test words all are)."""
    words = read_words(path)
    unknown = [w for w in words if w not in vocab.stoi]
    if unknown:
        examples = ", ".join(repr(w) for w in list(dict.fromkeys(unknown))[:5])
        raise TrainerError(
            f"{path}: {len(unknown):,} tokens are not in the vocabulary ({len(vocab):,} words), e.g. {examples}; "
            f"this file does not match the vocabulary (PTB maps rare words to {UNK} already)"
        )
    return torch.tensor([vocab.stoi[w] for w in words], dtype=torch.long)


@dataclass
class Corpus:
    """The three splits as id streams, with the training vocabulary."""

    vocab: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor


def load_corpus(data_dir: str | Path, vocab: Vocabulary | None = None) -> Corpus:
    """Read the three splits; the vocabulary is built from the training split unless one is given."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TrainerError(
            f"{data_dir}: no such data directory (get PTB with: python -m trainer download --out {data_dir})"
        )
    if vocab is None:
        vocab = Vocabulary.build(read_words(split_path(data_dir, "train")))
    return Corpus(vocab, *(encode_split(split_path(data_dir, s), vocab) for s in SPLITS))


def batchify(data: Tensor, batch_size: int) -> Tensor:
    """Cut a token stream into `batch_size` contiguous columns, dropping the remainder.

        data: [a b c d e f g h i j k]  batch_size=2  ->  [[a b c d e],
                                                          [f g h i j]]   (k dropped)

    Row r continues in the next window where it stopped in this one, so the LSTM state of row r can be
    carried across windows (the TF tutorial lays the columns out this way; it calls them rows).
    """
    n = data.numel() // batch_size
    if n < 2:
        raise TrainerError(f"{data.numel()} tokens are too few for batch_size {batch_size}")
    return data[: n * batch_size].view(batch_size, n)


def num_windows(batched: Tensor, num_steps: int) -> int:
    """Windows per epoch: (batch_len - 1) // num_steps, as in the tutorial (the last target needs one more)."""
    return (batched.shape[1] - 1) // num_steps


def windows(batched: Tensor, num_steps: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (inputs, targets), each (batch_size, num_steps); targets are the inputs shifted by one token.

    batched row: a b c d e f g    num_steps=3  ->  x=[a b c] y=[b c d], then x=[d e f] y=[e f g]
    """
    for i in range(num_windows(batched, num_steps)):
        s = i * num_steps
        yield batched[:, s : s + num_steps], batched[:, s + 1 : s + num_steps + 1]
