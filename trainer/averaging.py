"""Averaged SGD (Polyak averaging of the SGD iterates), the "ASGD" phase of Merity et al. (2017).

From the configured epoch on, after every SGD step the running mean of the parameters is updated; the
averaged parameters are what is validated, checkpointed and evaluated, while SGD keeps stepping the raw ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class ParameterAverager:
    """Running mean of a model's parameters: avg_n = avg_{n-1} + (p_n - avg_{n-1}) / n."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.count = 0
        self.avg: dict[str, Tensor] = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        for name, p in self.model.named_parameters():
            if self.count == 1:
                self.avg[name].copy_(p)
            else:
                self.avg[name].add_(p.detach() - self.avg[name], alpha=1.0 / self.count)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Within the block the model holds the averaged parameters; the raw ones come back afterwards."""
        if self.count == 0:
            yield
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            raw = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                p.copy_(self.avg[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(raw[n])

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"__avg__.{n}": t.detach().cpu().contiguous().clone() for n, t in self.avg.items()}

    def load_state_tensors(self, tensors: dict[str, Tensor], count: int) -> None:
        for n in self.avg:
            self.avg[n].copy_(tensors[f"__avg__.{n}"])
        self.count = count
