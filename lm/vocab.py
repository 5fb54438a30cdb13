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
        return cls.from_counts(Counter(words))

    @classmethod
    def from_counts(cls, counts: Counter[str], max_size: int | None = None, min_count: int = 1) -> Vocabulary:
        """The words of `counts` seen at least `min_count` times, at most the `max_size` most frequent
        (`<unk>` and `<eos>` always in, and counted in `max_size`); ids by descending frequency, then
        alphabetically. With neither limit: every word, as `build`."""
        if max_size is not None and max_size < 2:
            raise VocabularyError(f"a vocabulary needs at least 2 entries (<unk> and <eos>), not {max_size}")
        if min_count < 1:
            raise VocabularyError(f"min_count must be at least 1, not {min_count}")

        def order(w: str) -> tuple[int, str]:
            return -counts.get(w, 0), w

        words = sorted((w for w, n in counts.items() if n >= min_count and w not in (UNK, EOS)), key=order)
        if max_size is not None:
            words = words[: max_size - 2]
        return cls(sorted([*words, UNK, EOS], key=order))

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
