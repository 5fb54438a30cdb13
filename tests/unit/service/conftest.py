"""Fixtures for the service tests: a tiny checkpoint in tmp and the real app around it.

Every test runs the real FastAPI app with its lifespan (checkpoint loading, warm-up, batching engine) against
a small random LSTM whose outputs are far from uniform, so that a wrong token, a wrong position or a wrong
state gives a visibly wrong number. The reference log-probabilities (service_helpers.py) come from a plain
`model.forward` and `torch.log_softmax`, never through `lm.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_helpers import METRICS
from tiny_models import TinyCheckpoint, write_tiny_checkpoint

from lm.model import LSTMLanguageModel, ModelConfig
from lm.vocab import Vocabulary
from service.app import create_app
from service.settings import Settings

# The suite shares two cores with whatever else runs on the machine.
torch.set_num_threads(1)

SERVICE_WORDS = [
    "<unk>", "<eos>", "N", "$", "'s", "n't", "mr.", "u.s.", "corp.", "the", "stock", "market", "rose", "company",
    "said", "profits", "to", "million", "a", "of", "and", "in", "for", "is", "that", "on", "it", "was", "by", "with",
    "at", "from", "as", "be", "has", "have", "are", "he", "but", "not", "this", "year", "new", "shares", "sales", "up",
    "down", "more", "billion", "fell", "percent", "inc.", "did", "say", "do", "ca", "wo", "'", "smith", "funds",
    "investors", "bank", "prices", "last", "week", "quarter", "net", "income", "its", "will",
]  # fmt: skip


@pytest.fixture(scope="session")
def service_vocab() -> Vocabulary:
    return Vocabulary(SERVICE_WORDS)


@pytest.fixture(scope="session")
def service_ckpt(tmp_path_factory: pytest.TempPathFactory, service_vocab: Vocabulary) -> TinyCheckpoint:
    """A 2-layer LSTM with 8 units, init ±0.5 from a fixed seed, saved with `save_checkpoint`."""
    torch.manual_seed(1234)
    model = LSTMLanguageModel(ModelConfig(vocab_size=len(service_vocab), embed_size=8, hidden_size=8, num_layers=2))
    model.init_weights(0.5)
    model.eval()
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("service") / "tiny-lm",
        model,
        service_vocab,
        training={"name": "tiny", "seed": 1234, "max_epochs_run": 1, "device": "cpu"},
        metrics=METRICS,
    )


@pytest.fixture
def make_settings(service_ckpt: TinyCheckpoint) -> Callable[..., Settings]:
    """Settings for the tiny checkpoint on the CPU; keyword arguments override any field."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"model": service_ckpt.path, "device": "cpu", "dtype": "float32"}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_app(make_settings) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        return create_app(make_settings(**overrides))

    return make


@pytest.fixture
def serve(make_app) -> Callable[..., Any]:
    """`with serve(**settings) as client:` the real app, lifespan started (checkpoint loaded, engine running)."""

    @contextmanager
    def run(raise_server_exceptions: bool = True, **overrides: Any) -> Iterator[TestClient]:
        app = make_app(**overrides)
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            yield client

    return run


@pytest.fixture
def client(serve) -> Iterator[TestClient]:
    """The app with default settings (plus the tiny model on the CPU)."""
    with serve() as c:
        yield c
