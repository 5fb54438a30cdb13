"""Vocabulary: the word <-> id mapping, stored as `vocab.txt` (one token per line, id = line number)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

UNK = "<unk>"
EOS = "<eos>"


class VocabularyError(ValueError):
    """A vocabulary file or word list that cannot serve as a vocabulary."""


class Vocabulary:
    """An ordered list of distinct tokens; `<unk>` and `<eos>` are always present."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            if not tok or any(c.isspace() for c in tok):
                raise VocabularyError(f"token {i} ({tok!r}) is empty or contains whitespace")
            if tok in self.stoi:
                raise VocabularyError(f"token {tok!r} appears twice (ids {self.stoi[tok]} and {i})")
            self.stoi[tok] = i
        for special in (UNK, EOS):
            if special not in self.stoi:
                raise VocabularyError(f"the vocabulary has no {special} token")
        self.unk_id = self.stoi[UNK]
        self.eos_id = self.stoi[EOS]

    @classmethod
    def build(cls, words: Iterable[str]) -> Vocabulary:
        """Vocabulary of a corpus, ids by descending frequency then alphabetically (the TF tutorial's order)."""
        counts = Counter(words)
        counts.setdefault(UNK, 0)
        counts.setdefault(EOS, 0)
        return cls(sorted(counts, key=lambda w: (-counts[w], w)))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise VocabularyError(f"{path}: cannot read vocabulary ({e})") from e
        if text.startswith("\ufeff"):
            raise VocabularyError(f"{path}: starts with a byte-order mark (U+FEFF); save it as UTF-8 without one")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        try:
            return cls(lines)
        except VocabularyError as e:
            raise VocabularyError(f"{path}: {e}") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text("".join(tok + "\n" for tok in self.itos), encoding="utf-8")

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def id(self, token: str) -> int:
        """The id of `token`, or `<unk>`'s id for a word outside the vocabulary."""
        return self.stoi.get(token, self.unk_id)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]
