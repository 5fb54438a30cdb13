"""Any corpus in: the streaming encoder (the PTB streams exactly as before), the vocabulary options with their
`<unk>` counts, gzip, the data-directory and file options, and one-line errors for bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from lm.tokenizers import WordsTokenizer
from lm.vocab import EOS, UNK, Vocabulary
from trainer.cli import main
from trainer.data import DataFiles, count_words, encode_file, load_corpus, split_path
from trainer.errors import TrainerError


def old_reader_ids(path: Path, vocab: Vocabulary | None = None) -> tuple[list[int], Vocabulary]:
    """The reader the trainer had before streaming (whole file, list of strings), kept here as the reference."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words.extend(line.split())
        words.append(EOS)
    vocab = vocab or Vocabulary.build(words)
    return [vocab.stoi[w] for w in words], vocab


def test_ptb_streams_are_the_old_readers(ptb_dir: Path) -> None:
    corpus = load_corpus(ptb_dir)
    train, vocab = old_reader_ids(ptb_dir / "ptb.train.txt")
    assert corpus.vocab == vocab
    assert corpus.train.dtype == torch.int32
    assert corpus.train.tolist() == train
    for split in ("valid", "test"):
        assert getattr(corpus, split).tolist() == old_reader_ids(ptb_dir / f"ptb.{split}.txt", vocab)[0], split
    assert corpus.oov == {"train": 0, "valid": 0, "test": 0}
    assert corpus.unk_tokens()["train"] == train.count(vocab.unk_id) == 45_020  # PTB's own <unk> tokens


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    write(d / "train.txt", "a a a b b c\nd a b\n")  # a 4, b 3, <eos> 2, c 1, d 1
    write(d / "valid.txt", "a e c\n")
    write(d / "test.txt", "f b\n")
    return d


def test_every_training_word_by_default_and_unknown_words_refused(small_corpus: Path) -> None:
    with pytest.raises(TrainerError, match=r"valid\.txt: 1 tokens are not in the vocabulary.*'e'.*--vocab-size"):
        load_corpus(small_corpus)


def test_vocab_size_keeps_the_most_frequent_and_maps_the_rest_to_unk(small_corpus: Path) -> None:
    corpus = load_corpus(small_corpus, vocab_size=4)  # <unk>, <eos> and the two most frequent words
    assert corpus.vocab.itos == ["a", "b", "<eos>", UNK]
    u = corpus.vocab.unk_id
    assert corpus.train.tolist() == [0, 0, 0, 1, 1, u, 2, u, 0, 1, 2]
    assert corpus.valid.tolist() == [0, u, u, 2]
    assert corpus.test.tolist() == [u, 1, 2]
    assert corpus.oov == {"train": 2, "valid": 2, "test": 1}
    assert corpus.unk_tokens() == corpus.oov  # no literal <unk> in these files


def test_min_count_keeps_the_words_seen_often_enough(small_corpus: Path) -> None:
    corpus = load_corpus(small_corpus, min_count=3)
    assert sorted(corpus.vocab.itos) == sorted(["a", "b", EOS, UNK])
    assert load_corpus(small_corpus, min_count=2, vocab_size=3).vocab.itos == ["a", "<eos>", UNK]


def test_vocabulary_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        Vocabulary.from_counts({"a": 1}, max_size=1)
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.from_counts({"a": 1}, min_count=0)


def test_gzip_and_plain_files_give_the_same_ids(small_corpus: Path, tmp_path: Path) -> None:
    gz = tmp_path / "train.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write((small_corpus / "train.txt").read_text(encoding="utf-8"))
    vocab = Vocabulary.from_counts(count_words(small_corpus / "train.txt"))
    assert count_words(gz) == count_words(small_corpus / "train.txt")
    assert encode_file(gz, vocab).ids.tolist() == encode_file(small_corpus / "train.txt", vocab).ids.tolist()


def test_tokenizer_applies_to_counting_and_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "t.txt", "Hello, world!\nhello WORLD\n")
    tok = WordsTokenizer(lowercase=True)
    counts = count_words(path, tok)
    assert counts == {"hello": 2, "world": 2, ",": 1, "!": 1, EOS: 2}
    vocab = Vocabulary.from_counts(counts)
    assert vocab.decode(encode_file(path, vocab, tok).ids.tolist()) == [
        *["hello", ",", "world", "!", EOS],
        *["hello", "world", EOS],
    ]


def test_data_dir_accepts_plain_split_names(small_corpus: Path, tmp_path: Path) -> None:
    assert split_path(small_corpus, "valid") == small_corpus / "valid.txt"
    files = DataFiles.resolve(small_corpus, test=None)
    assert (files.train, files.valid, files.test) == tuple(
        small_corpus / f"{s}.txt" for s in ("train", "valid", "test")
    )
    other = write(tmp_path / "other.txt", "a b\n")
    assert DataFiles.resolve(small_corpus, valid=other).valid == other  # a file option overrides the directory's
    assert DataFiles.resolve(None, train=other, valid=other).test is None
    with pytest.raises(TrainerError, match="--data-dir, or both --train and --valid"):
        DataFiles.resolve(None, train=other)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda d: d / "missing.txt", "missing.txt: no such file"),
        (lambda d: d.joinpath("latin1.txt").write_bytes(b"caf\xe9\n") and d / "latin1.txt", "line 1 is not UTF-8"),
        (lambda d: d.joinpath("bad.gz").write_bytes(b"not gzip") and d / "bad.gz", "bad.gz: cannot read"),
    ],
)
def test_bad_training_file_is_one_line_and_exit_2(capsys, small_corpus: Path, tmp_path: Path, setup, fragment) -> None:
    code, err = run_cli(
        capsys, "train", "--config", "test", "--train", setup(tmp_path), "--valid", small_corpus / "valid.txt",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_train_on_own_files_records_tokenizer_and_unk_counts(capsys, small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, err = run_cli(
        capsys, "train", "--config", "test", "--train", small_corpus / "train.txt", "--valid",
        small_corpus / "valid.txt", "--vocab-size", "4", "--batch-size", "1", "--out", out, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"] == {"name": "whitespace"}  # not ptb.*.txt files: whitespace by default
    assert meta["vocab_size"] == 4
    assert meta["training"]["unk_tokens"] == {"train": 2, "valid": 2}  # no --test, no test.txt looked for
    assert meta["training"]["vocab_size_limit"] == 4
    assert meta["metrics"]["test_ppl"] is None
