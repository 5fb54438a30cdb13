"""PTB reading and the tutorial's batching, against hand-worked examples and the real data's counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lm.vocab import EOS, Vocabulary
from trainer.data import (
    batchify,
    default_data_dir,
    encode_split,
    load_corpus,
    num_windows,
    read_words,
    split_path,
    windows,
)
from trainer.errors import TrainerError


def test_batchify_cuts_contiguous_rows_and_drops_the_remainder() -> None:
    batched = batchify(torch.arange(23), 4)  # 23 // 4 = 5 per row, 3 tokens dropped
    expected = torch.tensor(
        [
            [0, 1, 2, 3, 4],
            [5, 6, 7, 8, 9],
            [10, 11, 12, 13, 14],
            [15, 16, 17, 18, 19],
        ]
    )
    assert torch.equal(batched, expected)


def test_batchify_exact_multiple_drops_nothing() -> None:
    assert torch.equal(batchify(torch.arange(6), 2), torch.tensor([[0, 1, 2], [3, 4, 5]]))


def test_batchify_refuses_too_few_tokens() -> None:
    with pytest.raises(TrainerError, match="too few"):
        batchify(torch.arange(7), 4)  # one token per row: no target for it


def test_windows_shift_targets_by_one() -> None:
    batched = batchify(torch.arange(23), 4)
    assert num_windows(batched, 2) == 2  # (5 - 1) // 2
    got = list(windows(batched, 2))
    expected = [
        (
            torch.tensor([[0, 1], [5, 6], [10, 11], [15, 16]]),
            torch.tensor([[1, 2], [6, 7], [11, 12], [16, 17]]),
        ),
        (
            torch.tensor([[2, 3], [7, 8], [12, 13], [17, 18]]),
            torch.tensor([[3, 4], [8, 9], [13, 14], [18, 19]]),
        ),
    ]
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert torch.equal(x, ex)
        assert torch.equal(y, ey)


def test_windows_docstring_example() -> None:
    # One row a..g (0..6), num_steps=3: x=[a b c] y=[b c d], then x=[d e f] y=[e f g].
    batched = torch.arange(7).view(1, 7)
    got = [(x.tolist(), y.tolist()) for x, y in windows(batched, 3)]
    assert got == [([[0, 1, 2]], [[1, 2, 3]]), ([[3, 4, 5]], [[4, 5, 6]])]


def test_windows_leave_a_short_tail_out() -> None:
    batched = torch.arange(12).view(1, 12)
    # (12 - 1) // 5 = 2 windows: inputs 0..9, targets 1..10; token 11 never appears.
    got = list(windows(batched, 5))
    assert len(got) == num_windows(batched, 5) == 2
    assert torch.cat([x for x, _ in got], dim=1).tolist() == [list(range(10))]
    assert torch.cat([y for _, y in got], dim=1).tolist() == [list(range(1, 11))]


@pytest.mark.parametrize(
    ("tokens", "batch_size", "num_steps"),
    [(929_589, 20, 20), (929_589, 20, 35), (73_760, 20, 35), (1000, 7, 3), (41, 4, 9)],
)
def test_epoch_size_is_the_tutorials_formula(tokens: int, batch_size: int, num_steps: int) -> None:
    batched = batchify(torch.arange(tokens), batch_size)
    epoch_size = ((tokens // batch_size) - 1) // num_steps  # ptb_word_lm's PTBInput.epoch_size
    assert num_windows(batched, num_steps) == epoch_size
    count = 0
    for x, y in windows(batched, num_steps):
        assert x.shape == y.shape == (batch_size, num_steps)
        assert torch.equal(y, x + 1)  # arange: every target is the next token of the same row
        count += 1
    assert count == epoch_size


def test_small_config_epoch_size_on_ptb_train() -> None:
    # 929,589 // 20 = 46,479 tokens per row; (46,479 - 1) // 20 = 2,323 windows per epoch.
    assert num_windows(batchify(torch.zeros(929_589, dtype=torch.long), 20), 20) == 2323


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_words_appends_eos_to_every_line(tmp_path: Path) -> None:
    path = write(tmp_path / "ptb.train.txt", " the cat sat \n a dog\n\n")
    assert read_words(path) == ["the", "cat", "sat", EOS, "a", "dog", EOS, EOS]


def test_read_words_missing_file_says_how_to_get_ptb(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match=r"no such file.*download"):
        read_words(tmp_path / "ptb.train.txt")


def test_read_words_refuses_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="too few tokens"):
        read_words(write(tmp_path / "empty.txt", ""))


def test_encode_split_refuses_words_outside_the_vocabulary(tmp_path: Path) -> None:
    vocab = Vocabulary(["<unk>", "<eos>", "the", "cat"])
    assert encode_split(write(tmp_path / "a.txt", "the cat\ncat\n"), vocab).tolist() == [2, 3, 1, 3, 1]
    with pytest.raises(TrainerError, match=r"2 tokens are not in the vocabulary.*'dog'.*'zebra'"):
        encode_split(write(tmp_path / "b.txt", "the dog\nzebra cat\n"), vocab)


def test_load_corpus_builds_the_vocabulary_from_train(tmp_path: Path) -> None:
    write(tmp_path / "ptb.train.txt", "b a b\nc b <unk>\n")
    write(tmp_path / "ptb.valid.txt", "a c\n")
    write(tmp_path / "ptb.test.txt", "<unk> b\n")
    corpus = load_corpus(tmp_path)
    # b: 3, <eos>: 2, a, c, <unk>: 1 each (alphabetically '<unk>' < 'a' < 'c').
    assert corpus.vocab.itos == ["b", "<eos>", "<unk>", "a", "c"]
    assert corpus.train.tolist() == [0, 3, 0, 1, 4, 0, 2, 1]
    assert corpus.valid.tolist() == [3, 4, 1]
    assert corpus.test.tolist() == [2, 0, 1]
    assert corpus.train.dtype == torch.long


def test_load_corpus_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="no such data directory"):
        load_corpus(tmp_path / "nope")


def test_default_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PTB_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("PTB_DATA_DIR")
    assert default_data_dir() == Path("data/ptb")
    assert split_path(tmp_path, "valid") == tmp_path / "ptb.valid.txt"


def test_real_ptb_token_counts(ptb_dir: Path, ptb_vocab: Vocabulary) -> None:
    corpus = load_corpus(ptb_dir, vocab=ptb_vocab)
    # docs/trainer.md: tokens with <eos>: train 929,589, valid 73,760, test 82,430; 42,068 training lines.
    assert corpus.train.numel() == 929_589
    assert corpus.valid.numel() == 73_760
    assert corpus.test.numel() == 82_430
    assert (corpus.train == ptb_vocab.eos_id).sum().item() == 42_068
    assert corpus.vocab is ptb_vocab
