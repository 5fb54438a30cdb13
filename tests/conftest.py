"""Shared fixtures: the real PTB data directory, tiny vocabularies, models and checkpoints.

The PTB files are read where they live ($PTB_DATA_DIR, default ../shared/data/ptb relative to the repository
root); they are never copied into the repository. Tests that need a modified data directory build it in
pytest's tmp_path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_models import TinyCheckpoint, write_tiny_checkpoint

from lm.model import LSTMLanguageModel, ModelConfig
from lm.vocab import Vocabulary

# The tests share two cores with whatever else runs on the machine: one thread each, and deterministic.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")

TINY_WORDS = ["<unk>", "<eos>", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "N", "."]


def ptb_data_dir() -> Path:
    """$PTB_DATA_DIR, or ../shared/data/ptb; a relative path is taken relative to the repository root."""
    path = Path(os.environ.get("PTB_DATA_DIR", "../shared/data/ptb")).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path.resolve()


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    """The real PTB directory (skips the test if the three files are not there)."""
    path = ptb_data_dir()
    missing = [name for name in SPLIT_FILES if not (path / name).is_file()]
    if missing:
        pytest.skip(f"PTB data not found in {path} (missing {', '.join(missing)}); set PTB_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def ptb_vocab(ptb_dir: Path) -> Vocabulary:
    """The 10,000-word vocabulary built from the real ptb.train.txt."""
    from trainer.data import read_words

    return Vocabulary.build(read_words(ptb_dir / "ptb.train.txt"))


def shortened_ptb(ptb_dir: Path, dest: Path, eval_lines: int) -> Path:
    """A data directory `dest` (in tmp): the real training file, and the first lines of valid and test."""
    dest.mkdir(parents=True, exist_ok=True)
    train = dest / "ptb.train.txt"
    try:
        train.symlink_to(ptb_dir / "ptb.train.txt")
    except OSError:  # no symlinks here: a copy in tmp is fine
        train.write_bytes((ptb_dir / "ptb.train.txt").read_bytes())
    for split in ("valid", "test"):
        lines = (ptb_dir / f"ptb.{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        (dest / f"ptb.{split}.txt").write_text("".join(lines[:eval_lines]), encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def ptb_short_dir(ptb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real train file, first 300 lines of valid and test: evaluation that means something, in a second."""
    return shortened_ptb(ptb_dir, tmp_path_factory.mktemp("ptb_short"), 300)


@pytest.fixture(scope="session")
def ptb_tiny_eval_dir(ptb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real train file, first 50 lines of valid and test: for runs whose evaluation only has to be repeatable."""
    return shortened_ptb(ptb_dir, tmp_path_factory.mktemp("ptb_tiny_eval"), 50)


@pytest.fixture
def fake_ptb_dir(tmp_path: Path) -> Path:
    """A made-up PTB-shaped corpus of ~2,000 tokens over a dozen words: trains in a blink."""
    d = tmp_path / "fake_ptb"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    words = TINY_WORDS[2:]
    for split, n_lines in (("train", 250), ("valid", 30), ("test", 30)):
        lines = []
        for _ in range(n_lines):
            length = int(torch.randint(3, 12, (1,), generator=g))
            lines.append(" ".join(words[int(i)] for i in torch.randint(0, len(words), (length,), generator=g)))
        (d / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


@pytest.fixture
def tiny_vocab() -> Vocabulary:
    return Vocabulary(TINY_WORDS)


@pytest.fixture
def make_model() -> Callable[..., LSTMLanguageModel]:
    """Factory of small random models in eval mode (no dropout), seeded so that each call is reproducible."""

    def make(
        vocab_size: int = len(TINY_WORDS),
        embed_size: int = 6,
        hidden_size: int = 8,
        num_layers: int = 2,
        tie_weights: bool = False,
        seed: int = 0,
        init_scale: float = 0.5,
    ) -> LSTMLanguageModel:
        torch.manual_seed(seed)
        config = ModelConfig(vocab_size, embed_size, hidden_size, num_layers, 0.0, tie_weights)
        model = LSTMLanguageModel(config)
        model.init_weights(init_scale)
        return model.eval()

    return make


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_vocab: Vocabulary, make_model) -> TinyCheckpoint:
    """A checkpoint written with save_checkpoint into tmp_path/ckpt: a small random model and a small vocabulary."""
    model = make_model(vocab_size=len(tiny_vocab))
    return write_tiny_checkpoint(
        tmp_path / "ckpt",
        model,
        tiny_vocab,
        training={"name": "tiny", "seed": 0},
        metrics={"valid_ppl": 12.5, "test_ppl": 13.25},
    )
