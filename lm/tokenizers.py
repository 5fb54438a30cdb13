"""Tokenizers: raw text -> the model's tokens, one registry from the name a checkpoint records.

    tok = tokenizer_for(ckpt)          # the tokenizer the checkpoint was trained with
    tok.tokenize("Prices rose 5%.")   # -> list[str]

A checkpoint's config.json records its tokenizer as a spec, e.g. `{"name": "words", "lowercase": true}`;
a checkpoint without one (format lstm-lm/1) is PTB's. Three tokenizers:

- `whitespace`: split on whitespace, nothing else (text that is tokenized already, as KenLM expects);
- `ptb`: PTB's normaliser (lm/normalize.py) for raw input. Its training text is PTB-form already (Mikolov's
  files), so the trainer splits those lines on whitespace; the normaliser needs the vocabulary, which is
  built from those tokens, and maps raw text onto it at scoring time;
- `words`: a generic tokenizer for raw text in any language: NFKC, then words (letters with their combining
  marks and digits, inner apostrophes and hyphens kept: `don't`, `état-major`), numbers (`3.14`, `1,000`)
  and every other non-space character on its own; optionally lower-cased (`lowercase`).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import Protocol

from lm.normalize import PTBNormalizer
from lm.vocab import Vocabulary

DEFAULT = "ptb"  # what a checkpoint without a `tokenizer` entry was trained with


class TokenizerError(ValueError):
    """An unknown tokenizer name or an invalid spec."""


class Tokenizer(Protocol):
    """Text -> tokens; `spec()` is what config.json records to rebuild it."""

    name: str

    def tokenize(self, text: str) -> list[str]: ...

    def tokenize_corpus_line(self, line: str) -> list[str]: ...

    def spec(self) -> dict: ...


class WhitespaceTokenizer:
    """The text split on whitespace, nothing else."""

    name = "whitespace"

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def tokenize_corpus_line(self, line: str) -> list[str]:
        return line.split()

    def spec(self) -> dict:
        return {"name": self.name}


class PTBTokenizer:
    """PTB's normaliser for raw text; training text is PTB-form already and is split on whitespace."""

    name = "ptb"

    def __init__(self, vocab: Vocabulary | None = None) -> None:
        self._normalizer = PTBNormalizer(vocab) if vocab is not None else None

    def tokenize(self, text: str) -> list[str]:
        if self._normalizer is None:
            raise TokenizerError("the ptb tokenizer normalises onto a vocabulary: build it with one")
        return self._normalizer(text)

    def tokenize_corpus_line(self, line: str) -> list[str]:
        return line.split()

    def spec(self) -> dict:
        return {"name": self.name}


@functools.cache
def _words_pattern() -> re.Pattern[str]:
    """The `words` regex, built once on first use (listing the combining marks takes a fraction of a second)."""
    ranges: list[list[int]] = []  # every combining mark (categories Mn, Mc, Me) as code-point ranges
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)).startswith("M"):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    marks = "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)
    word_char = rf"(?:\w|[{marks}])"  # letters, digits, _ and combining marks (Devanagari vowel signs, ...)
    return re.compile(
        r"\d+(?:[.,]\d+)*"  # numbers: 42, 3.14, 1,000,000
        rf"|{word_char}+(?:['\u2019\-]{word_char}+)*"  # words, inner apostrophes and hyphens kept
        r"|\S"  # any other character on its own: punctuation, symbols
    )


class WordsTokenizer:
    """Unicode-aware words, numbers and punctuation of raw text in any language; optionally lower-cased."""

    name = "words"

    def __init__(self, lowercase: bool = False) -> None:
        self.lowercase = lowercase

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text)
        if self.lowercase:
            text = text.lower()
        return _words_pattern().findall(text)

    def tokenize_corpus_line(self, line: str) -> list[str]:
        return self.tokenize(line)

    def spec(self) -> dict:
        return {"name": self.name, "lowercase": self.lowercase}


TOKENIZERS = ("whitespace", "ptb", "words")


def make_tokenizer(spec: dict | str | None, vocab: Vocabulary | None = None) -> Tokenizer:
    """The tokenizer a spec names (a dict from config.json, or just a name); None means PTB's.

    `vocab` is the model's vocabulary, needed by `ptb` to normalise raw text onto it.
    """
    if spec is None:
        spec = {"name": DEFAULT}
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise TokenizerError(f"a tokenizer spec is an object with a name, not {spec!r}")
    name = spec.get("name")
    options = {k: v for k, v in spec.items() if k != "name"}
    if name == "whitespace" and not options:
        return WhitespaceTokenizer()
    if name == "ptb" and not options:
        return PTBTokenizer(vocab)
    if name == "words" and set(options) <= {"lowercase"}:
        lowercase = options.get("lowercase", False)
        if not isinstance(lowercase, bool):
            raise TokenizerError(f"tokenizer words: lowercase must be true or false, not {lowercase!r}")
        return WordsTokenizer(lowercase)
    if name not in TOKENIZERS:
        raise TokenizerError(f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZERS)}")
    raise TokenizerError(f"tokenizer {name}: unknown options {sorted(options)}")


def tokenizer_for(ckpt: object) -> Tokenizer:
    """The tokenizer a loaded checkpoint (lm.checkpoint.Checkpoint) was trained with, over its vocabulary."""
    return make_tokenizer(ckpt.meta.get("tokenizer"), ckpt.vocab)  # type: ignore[attr-defined]
