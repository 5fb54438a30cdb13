"""Averaged SGD: the running mean is the mean of the iterates, and swapping it in is undone afterwards."""

from __future__ import annotations

import torch
from torch import nn

from trainer.averaging import ParameterAverager


def test_average_is_the_mean_of_the_iterates_and_swap_restores() -> None:
    model = nn.Linear(3, 2)
    avg = ParameterAverager(model)
    seen = []
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(step + 1))
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        avg.update()
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with avg.swapped():
        for n, p in model.named_parameters():
            assert torch.allclose(p, torch.stack([s[n] for s in seen]).mean(0), atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.equal(p, raw[n])


def test_state_round_trip() -> None:
    model = nn.Linear(3, 2)
    avg = ParameterAverager(model)
    avg.update()
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update()
    other = ParameterAverager(nn.Linear(3, 2))
    other.load_state_tensors(avg.state_tensors(), avg.count)
    assert other.count == 2
    assert all(torch.equal(other.avg[n], avg.avg[n]) for n in avg.avg)


def test_swap_before_any_update_changes_nothing() -> None:
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    with ParameterAverager(model).swapped():
        assert torch.equal(model.weight, before)
