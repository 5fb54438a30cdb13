"""The tokenizer registry: each tokenizer on its own (round trips, Unicode, numbers) and rebuilt from a spec."""

from __future__ import annotations

import pytest

from lm.checkpoint import load_checkpoint
from lm.normalize import PTBNormalizer
from lm.tokenizers import (
    PTBTokenizer,
    TokenizerError,
    WhitespaceTokenizer,
    WordsTokenizer,
    make_tokenizer,
    tokenizer_for,
)
from lm.vocab import Vocabulary


def test_whitespace_splits_on_whitespace_only() -> None:
    tok = WhitespaceTokenizer()
    assert tok.tokenize("  Hello,\tworld!\n  It's 3.5% ") == ["Hello,", "world!", "It's", "3.5%"]
    assert tok.tokenize_corpus_line("a  b") == ["a", "b"]
    assert tok.spec() == {"name": "whitespace"}


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, world!", ["Hello", ",", "world", "!"]),
        ("It's 3.14 or 1,000,000 (42%).", ["It's", "3.14", "or", "1,000,000", "(", "42", "%", ")", "."]),
        ("état-major naïve café", ["état-major", "naïve", "café"]),
        ("Москва — столица России.", ["Москва", "—", "столица", "России", "."]),
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs and virama are combining marks: one word each
        ("x=y+2; f(x)", ["x", "=", "y", "+", "2", ";", "f", "(", "x", ")"]),
        ("日本語です。", ["日本語です", "。"]),
        ("snake_case and __init__", ["snake_case", "and", "__init__"]),
        ("", []),
    ],
)
def test_words_splits_words_numbers_and_punctuation(text: str, tokens: list[str]) -> None:
    assert WordsTokenizer().tokenize(text) == tokens


def test_words_composes_decomposed_accents_and_full_width_forms() -> None:
    # NFKC first: e + combining acute is one letter, a full-width digit is a digit.
    assert WordsTokenizer().tokenize("cafe\u0301 \uff13") == ["café", "3"]


def test_words_lowercases_when_asked() -> None:
    assert WordsTokenizer(lowercase=True).tokenize("The ÉCOLE, Straße") == ["the", "école", ",", "straße"]
    assert WordsTokenizer().tokenize("The") == ["The"]


@pytest.mark.parametrize(
    "text", ["Hello, world! It's 3.14.", "état-major (Москва) — 1,000 नमस्ते", "a+b=c; d's e-f", "“quoted” text…"]
)
def test_words_round_trip_on_its_own_output(text: str) -> None:
    tok = WordsTokenizer()
    tokens = tok.tokenize(text)
    assert tok.tokenize(" ".join(tokens)) == tokens  # tokenizing the tokens again changes nothing
    assert "".join(tokens) == "".join(tok.tokenize(text.replace(" ", "")))  # nothing but spaces is dropped


def test_ptb_is_the_normaliser_over_the_vocabulary() -> None:
    vocab = Vocabulary(["<unk>", "<eos>", "the", "company", "said", "N", "$", "n't", "do"])
    tok = PTBTokenizer(vocab)
    text = "The company said it didn't pay $30 million."
    assert tok.tokenize(text) == PTBNormalizer(vocab)(text)
    assert tok.tokenize("I don't") == ["i", "do", "n't"]
    # Training text is PTB-form already: split on whitespace, nothing mapped.
    assert tok.tokenize_corpus_line(" the <unk> N ") == ["the", "<unk>", "N"]
    with pytest.raises(TokenizerError, match="vocabulary"):
        PTBTokenizer().tokenize("x")


def test_registry_rebuilds_each_tokenizer_from_its_spec() -> None:
    vocab = Vocabulary(["<unk>", "<eos>", "a"])
    for tok in (WhitespaceTokenizer(), PTBTokenizer(vocab), WordsTokenizer(), WordsTokenizer(lowercase=True)):
        again = make_tokenizer(tok.spec(), vocab)
        assert type(again) is type(tok)
        assert again.spec() == tok.spec()
    assert make_tokenizer("words").spec() == {"name": "words", "lowercase": False}
    assert isinstance(make_tokenizer(None, vocab), PTBTokenizer)  # no spec: PTB's, as lstm-lm/1 checkpoints


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "bpe"}, "unknown tokenizer 'bpe'"),
        ({"name": "words", "lowercase": "yes"}, "lowercase must be true or false"),
        ({"name": "whitespace", "lowercase": True}, "unknown options"),
        (["words"], "an object with a name"),
    ],
)
def test_registry_refuses_bad_specs(spec: object, message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        make_tokenizer(spec)


def test_tokenizer_for_a_checkpoint(tiny_checkpoint) -> None:
    ckpt = load_checkpoint(tiny_checkpoint.path)
    assert ckpt.meta["tokenizer"] == {"name": "ptb"}  # save_checkpoint's default
    assert isinstance(tokenizer_for(ckpt), PTBTokenizer)
    del ckpt.meta["tokenizer"]  # a version-1 checkpoint has none: PTB's
    assert tokenizer_for(ckpt).tokenize("The cat.") == ["the", "cat"]  # PTB drops the full stop
    ckpt.meta["tokenizer"] = {"name": "words", "lowercase": True}
    assert tokenizer_for(ckpt).tokenize("The cat.") == ["the", "cat", "."]
    ckpt.meta["tokenizer"] = {"name": "whitespace"}
    assert tokenizer_for(ckpt).tokenize("The cat.") == ["The", "cat."]
