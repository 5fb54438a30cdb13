"""The LSTM language model of Zaremba et al. (2014): embedding -> dropout -> LSTM layers -> dropout -> decoder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

# (h, c), each (num_layers, B, H): the LSTM state carried from one window of text to the next.
State = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape; the checkpoint stores it so the model can be rebuilt from the files alone."""

    vocab_size: int
    embed_size: int
    hidden_size: int
    num_layers: int
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout!r}")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise ValueError(f"tie_weights needs embed_size == hidden_size ({self.embed_size} != {self.hidden_size})")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_dict(self) -> dict:
        return asdict(self)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the checkpoint with its shape (DESIGN.md's names; gate order i, f, g, o)."""
        v, e, h = self.vocab_size, self.embed_size, self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (v, e)}
        for k in range(self.num_layers):
            shapes[f"lstm.weight_ih_l{k}"] = (4 * h, e if k == 0 else h)
            shapes[f"lstm.weight_hh_l{k}"] = (4 * h, h)
            shapes[f"lstm.bias_ih_l{k}"] = (4 * h,)
            shapes[f"lstm.bias_hh_l{k}"] = (4 * h,)
        shapes["decoder.weight"] = (v, h)
        shapes["decoder.bias"] = (v,)
        return shapes


class LSTMLanguageModel(nn.Module):
    """A word-level LSTM language model; `forward` maps token ids (B, T) to next-token logits (B, T, V)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size)
        self.drop = nn.Dropout(config.dropout)
        # nn.LSTM's own dropout acts between layers: with `drop` on its input and output, every layer's
        # output is dropped as in Zaremba et al.; the recurrent connections are not.
        self.lstm = nn.LSTM(
            config.embed_size,
            config.hidden_size,
            config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def init_weights(self, init_scale: float) -> None:
        """Uniform init of every parameter in [-init_scale, init_scale], as in the paper and the tutorial."""
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        c = self.config
        device = device if device is not None else self.embedding.weight.device
        zeros = torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device)
        return zeros, zeros.clone()

    def features(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The last LSTM layer's output (B, T, H), after dropout, and the state after the last step."""
        x = self.drop(self.embedding(ids))  # (B, T, E)
        out, state = self.lstm(x, state)  # (B, T, H)
        return self.drop(out), state

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        out, state = self.features(ids, state)
        return self.decoder(out), state  # (B, T, V)


def detach_state(state: State) -> State:
    """Cut the graph at a window boundary: truncated BPTT carries the values, not the history."""
    return state[0].detach(), state[1].detach()
