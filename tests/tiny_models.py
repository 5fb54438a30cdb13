"""The tiny checkpoints of the tests: a small random LSTM and its vocabulary, written with `save_checkpoint`,
kept in memory beside the files for the by-hand references."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm.checkpoint import save_checkpoint
from lm.model import LSTMLanguageModel
from lm.vocab import Vocabulary


@dataclass
class TinyCheckpoint:
    """A checkpoint on disk and the same model and vocabulary in memory."""

    path: Path
    model: LSTMLanguageModel
    vocab: Vocabulary


def write_tiny_checkpoint(path: Path, model: LSTMLanguageModel, vocab: Vocabulary, **meta: Any) -> TinyCheckpoint:
    """`save_checkpoint(path, model, vocab, **meta)`, returned with the model and vocabulary it holds."""
    return TinyCheckpoint(path=save_checkpoint(path, model, vocab, **meta), model=model, vocab=vocab)
