"""Reading a corpus into id streams, and the TF tutorial's batching.

Any plain UTF-8 text, one sentence (or line) per line, gzip-compressed if the name ends in `.gz`: the
tokenizer splits each line and `<eos>` ends it; the lines form one token stream. A directory holds the three
splits as `ptb.{split}.txt` or `{split}.txt` (either `.gz` too); `--train/--valid/--test` name files directly.

Two streaming passes, never the corpus as Python strings: the first counts the training words (a Counter of
types), the second encodes each split into a compact int32 tensor (4 bytes a token: 100 million tokens are
400 MB). The vocabulary is every training word (PTB's way: a closed vocabulary, where a valid or test word
outside it is an error), or the `vocab_size` most frequent / those seen `min_count` times, every other word
becoming `<unk>` in all three splits, counted.
"""

from __future__ import annotations

import gzip
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lm.checkpoint import sha256_file
from lm.tokenizers import Tokenizer, WhitespaceTokenizer
from lm.vocab import EOS, UNK, Vocabulary
from trainer.errors import TrainerError

SPLITS = ("train", "valid", "test")
DATA_DIR_ENV = "PTB_DATA_DIR"


def default_data_dir() -> Path:
    """`$PTB_DATA_DIR` if set, else `data/ptb` (where `python -m trainer download` puts the files)."""
    return Path(os.environ.get(DATA_DIR_ENV, "data/ptb"))


def split_path(data_dir: str | Path, split: str) -> Path:
    """The file of `split` in `data_dir`: the first of ptb.{split}.txt, {split}.txt (or either .gz) that
    exists, else ptb.{split}.txt (whose absence the reader reports)."""
    data_dir = Path(data_dir)
    for name in (f"ptb.{split}.txt", f"{split}.txt", f"ptb.{split}.txt.gz", f"{split}.txt.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    return data_dir / f"ptb.{split}.txt"


def _missing(path: Path) -> TrainerError:
    hint = f" (get PTB with: python -m trainer download --out {path.parent})" if path.name.startswith("ptb.") else ""
    return TrainerError(f"{path}: no such file{hint}")


def read_lines(path: str | Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (gunzipped on the fly for `.gz`), one at a time, without the newline."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    number = 0
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):  # noqa: B007 (the number is for the error message)
                yield line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise TrainerError(f"{path}: line {number + 1} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise TrainerError(f"{path}: cannot read ({e})") from None


def read_words(path: str | Path, tokenizer: Tokenizer | None = None) -> list[str]:
    """The file's tokens as one list, `<eos>` after every line: the simple reader, for small files and tests."""
    tokenizer = tokenizer or WhitespaceTokenizer()
    words: list[str] = []
    for line in read_lines(path):
        words.extend(tokenizer.tokenize_corpus_line(line))
        words.append(EOS)
    if len(words) < 2:
        raise TrainerError(f"{path}: too few tokens to train or evaluate on")
    return words


def count_words(path: str | Path, tokenizer: Tokenizer | None = None) -> Counter[str]:
    """Token counts of a file, `<eos>` counted once a line: the first streaming pass, one Counter of types."""
    tokenizer = tokenizer or WhitespaceTokenizer()
    counts: Counter[str] = Counter()
    lines = 0
    for line in read_lines(path):
        counts.update(tokenizer.tokenize_corpus_line(line))
        lines += 1
    counts[EOS] += lines
    if counts.total() < 2:
        raise TrainerError(f"{path}: too few tokens to train or evaluate on")
    return counts


@dataclass
class EncodedSplit:
    """A split's id stream (int32) and how many of its tokens were outside the vocabulary (now `<unk>`)."""

    ids: Tensor
    oov: int


ENCODE_CHUNK_TOKENS = 1 << 18  # what the encoder hands on at a time: 1 MiB of int32 ids


def encode_stream(
    path: str | Path,
    vocab: Vocabulary,
    write: Callable[[array], object],
    tokenizer: Tokenizer | None = None,
    closed: bool = False,
) -> tuple[int, int]:
    """Encode a file in one streaming pass, handing the int32 ids to `write` in chunks of about
    ENCODE_CHUNK_TOKENS (an array each, in order); returns (tokens, out-of-vocabulary tokens). A word outside
    `vocab` becomes `<unk>` (counted) or, with `closed`, is an error naming a few of them (PTB's valid and test
    words are all in its vocabulary). The one encoder of the in-memory stream and of the on-disk one."""
    tokenizer = tokenizer or WhitespaceTokenizer()
    stoi, eos = vocab.stoi, vocab.eos_id
    chunk = array("i")  # 4 bytes a token
    tokens = oov = 0
    examples: dict[str, None] = {}
    for line in read_lines(path):
        words = tokenizer.tokenize_corpus_line(line)
        line_ids = [stoi.get(w, -1) for w in words]
        if -1 in line_ids:  # words outside the vocabulary: <unk>, counted
            for i, w in enumerate(words):
                if line_ids[i] == -1:
                    oov += 1
                    line_ids[i] = vocab.unk_id
                    if len(examples) < 5:
                        examples[w] = None
        chunk.extend(line_ids)
        chunk.append(eos)
        if len(chunk) >= ENCODE_CHUNK_TOKENS:
            tokens += len(chunk)
            write(chunk)
            chunk = array("i")
    tokens += len(chunk)
    if chunk:
        write(chunk)
    if tokens < 2:
        raise TrainerError(f"{path}: too few tokens to train or evaluate on")
    if closed and oov:
        raise TrainerError(
            f"{path}: {oov:,} tokens are not in the vocabulary ({len(vocab):,} words), e.g. "
            f"{', '.join(repr(w) for w in examples)}; this file does not match the vocabulary (PTB maps rare "
            f"words to {UNK} already; pass --vocab-size or --min-count to map them to {UNK})"
        )
    return tokens, oov


def encode_file(
    path: str | Path, vocab: Vocabulary, tokenizer: Tokenizer | None = None, closed: bool = False
) -> EncodedSplit:
    """Encode a file in one streaming pass into an int32 tensor in memory (see encode_stream)."""
    ids = array("i")  # grown in place
    _, oov = encode_stream(path, vocab, ids.extend, tokenizer, closed)
    return EncodedSplit(torch.frombuffer(ids, dtype=torch.int32), oov)


def encode_split(path: str | Path, vocab: Vocabulary, tokenizer: Tokenizer | None = None) -> Tensor:
    """Token ids (int32) of a split whose every word must be in `vocab` (a closed vocabulary, as PTB's)."""
    return encode_file(path, vocab, tokenizer, closed=True).ids


@dataclass
class DataFiles:
    """The files of the three splits; `test` may be absent (no test perplexity then)."""

    train: Path
    valid: Path
    test: Path | None = None

    @classmethod
    def from_dir(cls, data_dir: str | Path) -> DataFiles:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise TrainerError(
                f"{data_dir}: no such data directory (get PTB with: python -m trainer download --out {data_dir})"
            )
        return cls(*(split_path(data_dir, s) for s in SPLITS))

    @classmethod
    def resolve(
        cls, data_dir: str | Path | None, train: Path | None = None, valid: Path | None = None, test: Path | None = None
    ) -> DataFiles:
        """`--train/--valid/--test` where given, the rest from `--data-dir` (a test file only if it exists)."""
        if train is not None and valid is not None:
            base = None
        elif data_dir is None:
            raise TrainerError("give --data-dir, or both --train and --valid")
        else:
            base = cls.from_dir(data_dir)
        if base is None:
            return cls(train, valid, test)
        found_test = base.test if base.test is not None and base.test.is_file() else None
        return cls(train or base.train, valid or base.valid, test or found_test)

    def items(self) -> list[tuple[str, Path]]:
        """(split, path) of the splits present."""
        return [(s, p) for s, p in zip(SPLITS, (self.train, self.valid, self.test), strict=True) if p is not None]

    def sha256(self) -> dict[str, str]:
        """Each split file's sha256 (what config.json records, and what keys a data cache)."""
        for _, path in self.items():
            if not path.is_file():
                raise _missing(path)
        try:
            return {s: sha256_file(p) for s, p in self.items()}
        except OSError as e:
            raise TrainerError(f"{e.filename}: cannot read ({e.strerror})") from None


@dataclass
class Corpus:
    """The splits as int32 id streams, with the training vocabulary and each split's out-of-vocabulary count."""

    vocab: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor | None = None
    oov: dict[str, int] = field(default_factory=dict)

    def unk_tokens(self) -> dict[str, int]:
        """Per split, the tokens that are `<unk>` in the stream (words mapped to it, and any `<unk>` in the text)."""
        streams = {"train": self.train, "valid": self.valid, "test": self.test}
        return {s: count_id(t, self.vocab.unk_id) for s, t in streams.items() if t is not None}


def count_id(ids: Tensor, token_id: int, chunk: int = 1 << 22) -> int:
    """How often `token_id` occurs in `ids`, a chunk at a time (a memory-mapped stream is never copied whole)."""
    return sum(int((ids[i : i + chunk] == token_id).sum()) for i in range(0, ids.numel(), chunk))


def build_vocabulary(
    train: str | Path, tokenizer: Tokenizer | None = None, vocab_size: int | None = None, min_count: int = 1
) -> Vocabulary:
    """The training file's vocabulary (the counting pass): every word, or the `vocab_size` most frequent /
    those seen `min_count` times."""
    counts = count_words(train, tokenizer)
    try:
        return Vocabulary.from_counts(counts, max_size=vocab_size, min_count=min_count)
    except ValueError as e:
        raise TrainerError(str(e)) from None


def closed_vocabulary(vocab_size: int | None, min_count: int) -> bool:
    """Without a limit the vocabulary is every training word, and a valid or test word outside it an error."""
    return vocab_size is None and min_count <= 1


def load_corpus(
    source: str | Path | DataFiles,
    vocab: Vocabulary | None = None,
    tokenizer: Tokenizer | None = None,
    vocab_size: int | None = None,
    min_count: int = 1,
) -> Corpus:
    """Read the splits of `source` (a data directory, or DataFiles) with `tokenizer` (default: whitespace).

    The vocabulary is `vocab` if given, else built from the training split: every word (closed: a valid or
    test word outside it is an error), or, with `vocab_size` or `min_count` > 1, the most frequent words,
    every other word becoming `<unk>` in all splits.
    """
    files = source if isinstance(source, DataFiles) else DataFiles.from_dir(source)
    closed = closed_vocabulary(vocab_size, min_count)
    vocab = vocab or build_vocabulary(files.train, tokenizer, vocab_size, min_count)
    encoded = {s: encode_file(p, vocab, tokenizer, closed=closed and s != "train") for s, p in files.items()}
    return Corpus(
        vocab,
        encoded["train"].ids,
        encoded["valid"].ids,
        encoded["test"].ids if "test" in encoded else None,
        oov={s: e.oov for s, e in encoded.items()},
    )


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


def shard(data: Tensor, batch_size: int, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s contiguous share of a stream for data-parallel training: exactly the rows
    rank * batch_size .. (rank + 1) * batch_size - 1 of `batchify(data, world_size * batch_size)`, so that
    `world_size` ranks of `batch_size` rows walk the same columns as one process with the combined batch.

        data: [a b c d e f g h i]  batch_size=1, 2 ranks  ->  rank 0: [a b c d], rank 1: [e f g h]  (i dropped)
    """
    n = data.numel() // (batch_size * world_size)
    share = batch_size * n
    return data[rank * share : (rank + 1) * share]


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
