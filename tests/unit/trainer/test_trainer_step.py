"""One truncated-BPTT step (`trainer.train.train_step`) against the tutorial's update written out by hand:
the per-token loss times num_steps, the gradient's global norm clipped, plain SGD, the state cut at the window."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lm.model import LSTMLanguageModel, State
from trainer.configs import TrainConfig, get_config
from trainer.train import TrainingObjective, make_optimizer, train_step


def window(seed: int, config: TrainConfig, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each (batch_size, num_steps): y is x shifted by one token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (config.batch_size, config.num_steps + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def by_hand(model: LSTMLanguageModel, config: TrainConfig, x, y, hidden: State, lr: float) -> tuple[float, State]:
    """The tutorial's step on `model` in place; returns the gradient's norm before clipping and the state at
    the end of the window (computed before the update)."""
    logits, last = model(x, (hidden[0].detach(), hidden[1].detach()))
    cost = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) * config.num_steps
    grads = torch.autograd.grad(cost, list(model.parameters()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()
    scale = min(1.0, config.max_grad_norm / (norm + 1e-6))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= lr * scale * g
    return norm, (last[0].detach(), last[1].detach())


@pytest.mark.parametrize("max_grad_norm", [0.05, 1e9], ids=["clipped", "not-clipped"])
def test_two_steps_equal_the_tutorials_update(make_model, max_grad_norm: float) -> None:
    config = replace(get_config("test"), lr=0.7, max_grad_norm=max_grad_norm)
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model, config)  # plain SGD at config.lr
    hidden = model.initial_state(config.batch_size)
    ref_hidden = reference.initial_state(config.batch_size)
    norms = []
    for seed in (1, 2):  # the second step starts from the first one's state: its graph must have been cut
        x, y = window(seed, config, model.config.vocab_size)
        norm, ref_hidden = by_hand(reference, config, x, y, ref_hidden, config.lr)
        norms.append(norm)
        _, hidden = train_step(TrainingObjective(model, config.bf16), optimizer, config, x, y, hidden)
        for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=f"{name} after step {seed}")
    if max_grad_norm < 1:
        assert min(norms) > 10 * max_grad_norm  # the clipping did act
    else:
        assert max(norms) < max_grad_norm
