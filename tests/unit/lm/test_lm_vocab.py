"""Vocabulary: build order, vocab.txt round trip, the special tokens, duplicates, OOV mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm.vocab import EOS, UNK, Vocabulary, VocabularyError


def test_build_orders_by_frequency_then_alphabetically() -> None:
    # the: 3; <eos>, cat: 2 (tie -> alphabetical, '<' sorts before 'c'); a, dog: 1; <unk> added with count 0.
    words = ["the", "cat", "the", "a", "dog", "cat", "the", EOS, EOS]
    vocab = Vocabulary.build(words)
    assert vocab.itos == ["the", EOS, "cat", "a", "dog", UNK]
    assert vocab.stoi == {w: i for i, w in enumerate(vocab.itos)}
    assert (vocab.unk_id, vocab.eos_id) == (5, 1)


def test_build_adds_missing_specials_after_every_real_word() -> None:
    vocab = Vocabulary.build(["b", "a", "b"])
    assert vocab.itos == ["b", "a", EOS, UNK]


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["x", "y", "z", "y", "z", "z", "<unk>", "<eos>"])
    path = tmp_path / "vocab.txt"
    vocab.save(path)
    assert path.read_text(encoding="utf-8") == "".join(f"{w}\n" for w in vocab.itos)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.itos == vocab.itos
    assert (loaded.unk_id, loaded.eos_id) == (vocab.unk_id, vocab.eos_id)


def test_load_reads_one_token_per_line(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("<eos>\nhello\n<unk>\n", encoding="utf-8")
    vocab = Vocabulary.load(path)
    assert vocab.itos == ["<eos>", "hello", "<unk>"]
    assert vocab.id("hello") == 1


@pytest.mark.parametrize("missing", [UNK, EOS])
def test_special_tokens_are_required(missing: str) -> None:
    tokens = [t for t in [UNK, EOS, "a", "b"] if t != missing]
    with pytest.raises(VocabularyError, match=missing):
        Vocabulary(tokens)


def test_duplicates_are_refused() -> None:
    with pytest.raises(VocabularyError, match="twice"):
        Vocabulary([UNK, EOS, "a", "b", "a"])


def test_duplicates_in_a_file_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("<unk>\n<eos>\nword\nword\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match=r"vocab\.txt"):
        Vocabulary.load(path)


@pytest.mark.parametrize("bad", ["", "two words", "tab\there"])
def test_empty_or_whitespace_tokens_are_refused(bad: str) -> None:
    with pytest.raises(VocabularyError):
        Vocabulary([UNK, EOS, bad])


def test_missing_file_is_a_vocabulary_error(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="cannot read"):
        Vocabulary.load(tmp_path / "nope.txt")


def test_encode_maps_oov_to_unk_and_decode_inverts(tiny_vocab: Vocabulary) -> None:
    ids = tiny_vocab.encode(["the", "zebra", "sat", "<eos>"])
    assert ids == [tiny_vocab.stoi["the"], tiny_vocab.unk_id, tiny_vocab.stoi["sat"], tiny_vocab.eos_id]
    assert tiny_vocab.decode(ids) == ["the", UNK, "sat", EOS]
    assert tiny_vocab.id("zebra") == tiny_vocab.unk_id
    assert "zebra" not in tiny_vocab
    assert "cat" in tiny_vocab
    assert len(tiny_vocab) == len(tiny_vocab.itos)


def test_equality_depends_on_order() -> None:
    assert Vocabulary([UNK, EOS, "a"]) == Vocabulary([UNK, EOS, "a"])
    assert Vocabulary([UNK, EOS, "a"]) != Vocabulary([EOS, UNK, "a"])


def test_real_ptb_vocabulary_has_10000_words(ptb_vocab: Vocabulary) -> None:
    assert len(ptb_vocab) == 10_000
    assert UNK in ptb_vocab and EOS in ptb_vocab
    # The TF tutorial's word_to_id: "the" is id 0, "<unk>" id 1, "<eos>" id 2 (42,068 lines, one <eos> each).
    assert ptb_vocab.itos[:3] == ["the", UNK, EOS]
