"""The runner's scored sentences carry their float64 totals, computed in the forward thread, and a sentence
with one impossible word (log-probability -inf) is refused as non-finite, while the same batch without it is not."""

from __future__ import annotations

import pytest
import torch
from tiny_models import write_tiny_checkpoint

from lm.model import LSTMLanguageModel, ModelConfig
from service.runner import ModelRunner, NonFiniteOutputError, ScoreJob


def test_totals_are_the_float64_sums_and_an_impossible_word_is_refused(service_vocab, make_settings, tmp_path) -> None:
    torch.manual_seed(5)
    model = LSTMLanguageModel(ModelConfig(vocab_size=len(service_vocab), embed_size=8, hidden_size=8, num_layers=2))
    model.init_weights(0.5)
    impossible = service_vocab.stoi["stock"]
    with torch.no_grad():
        model.decoder.bias[impossible] = float("-inf")  # never predicted: log-probability -inf, every other finite
    ckpt = write_tiny_checkpoint(tmp_path / "lm", model, service_vocab)
    runner = ModelRunner(ckpt, make_settings(model=ckpt.path))
    ids = service_vocab.encode
    eos = service_vocab.eos_id
    fine = [ScoreJob([eos, *ids(s.split()), eos]) for s in ("the market rose", "mr. smith said", "the")]

    results = runner.run(fine)
    for r in results:
        assert "total" in vars(r)  # computed in the runner (the forward thread), not left to the caller
        assert r.total == float(r.logprobs.double().sum())  # bit for bit
    assert all(torch.isfinite(r.logprobs).all() for r in results)

    with pytest.raises(NonFiniteOutputError):
        runner.run([*fine, ScoreJob([eos, *ids(["the", "stock", "rose"])])])
    with pytest.raises(NonFiniteOutputError):  # the impossible word last, after finite ones
        runner.run([ScoreJob([eos, *ids(["the", "market"]), impossible])])
