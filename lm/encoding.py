"""Text -> the ids the model reads: the one definition of an `<eos>`-primed sentence.

A sentence is scored as PTB's stream scores it: the model starts from the state after an `<eos>` (the end of
the previous sentence), so the ids begin with that priming `<eos>`, which is read, never predicted. Every word
is then predicted, a word outside the vocabulary as `<unk>`, and, with `add_eos`, the end of the sentence too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lm.normalize import PTBNormalizer, whitespace_tokens
from lm.vocab import EOS, UNK, Vocabulary


@dataclass(frozen=True)
class Encoded:
    """One sentence or prefix, ready for the model."""

    tokens: list[str]  # as the model sees them (OOVs as <unk>), after the priming <eos>; the final <eos> if asked
    oov: list[str]  # the input words scored as <unk>, in order
    ids: list[int]  # the priming <eos> first, then the tokens' ids


class SentenceEncoder:
    """The vocabulary's view of text: `split` (normalise or not), `encode` (words -> Encoded) and `token`
    (a single word, as a next-word candidate, looked up the way text is)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.normalizer = PTBNormalizer(vocab)

    def split(self, text: str, normalize: bool = True) -> list[str]:
        """The words of `text`: PTB-normalised, or (normalize=False) split on whitespace only."""
        return self.normalizer(text) if normalize else whitespace_tokens(text)

    def encode(self, words: Sequence[str], add_eos: bool = False) -> Encoded:
        """`<eos>`, then the words (OOVs as `<unk>`), then `<eos>` again if `add_eos`."""
        vocab = self.vocab
        oov = [w for w in words if w not in vocab]
        tokens = [w if w in vocab else UNK for w in words] + ([EOS] if add_eos else [])
        return Encoded(tokens, oov, [vocab.eos_id, *vocab.encode(tokens)])

    def token(self, word: str, normalize: bool = True) -> str | None:
        """The vocabulary token `word` stands for, or None: normalised like text (normalize=False: as written),
        it must give exactly one token, and that token must be in the vocabulary."""
        words = self.normalizer(word) if normalize else [word]
        return words[0] if len(words) == 1 and words[0] in self.vocab else None
