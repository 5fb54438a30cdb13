"""Text -> the ids the model reads: the one definition of an `<eos>`-primed sentence.

A sentence is scored as PTB's stream scores it: the model starts from the state after an `<eos>` (the end of
the previous sentence), so the ids begin with that priming `<eos>`, which is read, never predicted. Every word
is then predicted, a word outside the vocabulary as `<unk>`, and, with `add_eos`, the end of the sentence too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lm.normalize import whitespace_tokens
from lm.tokenizers import PTBTokenizer, Tokenizer, tokenizer_for
from lm.vocab import EOS, UNK, Vocabulary


@dataclass(frozen=True)
class Encoded:
    """One sentence or prefix, ready for the model."""

    tokens: list[str]  # as the model sees them (OOVs as <unk>), after the priming <eos>; the final <eos> if asked
    oov: list[str]  # the input words scored as <unk>, in order
    ids: list[int]  # the priming <eos> first, then the tokens' ids


class SentenceEncoder:
    """The vocabulary's view of text: `split` (normalise or not), `encode` (words -> Encoded) and `token`
    (a single word, as a next-word candidate, looked up the way text is); `tokenizer` is the checkpoint's."""

    def __init__(self, vocab: Vocabulary, tokenizer: Tokenizer | None = None) -> None:
        self.vocab = vocab
        self.tokenizer = tokenizer if tokenizer is not None else PTBTokenizer(vocab)

    @classmethod
    def for_checkpoint(cls, ckpt: object) -> SentenceEncoder:
        """The encoder of a loaded checkpoint: its vocabulary and the tokenizer it was trained with."""
        return cls(ckpt.vocab, tokenizer_for(ckpt))  # type: ignore[attr-defined]

    def split(self, text: str, normalize: bool = True) -> list[str]:
        """The words of `text`: the model's own tokenizer (PTB's normaliser for a PTB model), or
        (normalize=False) split on whitespace only."""
        return self.tokenizer.tokenize(text) if normalize else whitespace_tokens(text)

    def encode(self, words: Sequence[str], add_eos: bool = False) -> Encoded:
        """`<eos>`, then the words (OOVs as `<unk>`), then `<eos>` again if `add_eos`."""
        vocab, stoi = self.vocab, self.vocab.stoi
        tokens, oov, ids = [], [], [vocab.eos_id]
        for w in words:  # one pass, plain dict lookups: a request's words are encoded on the event loop
            i = stoi.get(w)
            if i is None:
                oov.append(w)
                tokens.append(UNK)
                ids.append(vocab.unk_id)
            else:
                tokens.append(w)
                ids.append(i)
        if add_eos:
            tokens.append(EOS)
            ids.append(vocab.eos_id)
        return Encoded(tokens, oov, ids)

    def token(self, word: str, normalize: bool = True) -> str | None:
        """The vocabulary token `word` stands for, or None: normalised like text (normalize=False: as written),
        it must give exactly one token, and that token must be in the vocabulary."""
        words = self.tokenizer.tokenize(word) if normalize else [word]
        return words[0] if len(words) == 1 and words[0] in self.vocab else None
