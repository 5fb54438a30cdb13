"""The LSTM language model of Zaremba et al. (2014): embedding -> dropout -> LSTM layers -> dropout -> decoder.

With every option off it is exactly the paper's network. The options are the regularisers of later work,
used only while training (inference is the same plain LSTM, so every checkpoint scores the same way):

- `tie_weights`: the decoder uses the embedding matrix (Press & Wolf 2017; Inan et al. 2017);
- `locked_dropout`: one dropout mask per sequence, the same at every time step (Gal & Ghahramani 2016),
  for the embedding output, between layers and on the last layer's output;
- `dropout_input`, `dropout_between`, `dropout_output`: separate rates for those three (default: `dropout`);
- `embed_dropout`: drop whole words, i.e. rows of the embedding matrix (Gal & Ghahramani 2016);
- `weight_drop`: DropConnect on the hidden-to-hidden weights (Merity et al. 2017, AWD-LSTM).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
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
    dropout_input: float | None = None  # None: `dropout`
    dropout_between: float | None = None  # None: `dropout`
    dropout_output: float | None = None  # None: `dropout`
    locked_dropout: bool = False
    embed_dropout: float = 0.0
    weight_drop: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("dropout", "dropout_input", "dropout_between", "dropout_output", "embed_dropout", "weight_drop"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {value!r}")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise ValueError(f"tie_weights needs embed_size == hidden_size ({self.embed_size} != {self.hidden_size})")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_dict(self) -> dict:
        return asdict(self)

    def rate(self, where: str) -> float:
        """The dropout rate at `where` (input, between, output)."""
        value = getattr(self, f"dropout_{where}")
        return self.dropout if value is None else value

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the checkpoint with its shape (the checkpoint format of docs/architecture.md; gate order
        i, f, g, o)."""
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
        # nn.LSTM's own dropout acts between layers: with dropout on its input and output, every layer's
        # output is dropped as in Zaremba et al.; the recurrent connections are not.
        self.lstm = nn.LSTM(
            config.embed_size,
            config.hidden_size,
            config.num_layers,
            dropout=config.rate("between") if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        # The layer-by-layer path is needed only for masks nn.LSTM cannot apply (locked, DropConnect).
        self._layerwise = config.locked_dropout or config.weight_drop > 0

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

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        """Dropout on (B, T, D); locked: one mask per sequence and feature, shared by all time steps."""
        if not self.training or p == 0.0:
            return x
        if not self.config.locked_dropout:
            return F.dropout(x, p, True)
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p) / (1.0 - p)  # (B, 1, D)
        return x * mask

    def _embed(self, ids: Tensor) -> Tensor:
        p = self.config.embed_dropout
        if not self.training or p == 0.0:
            return self.embedding(ids)
        w = self.embedding.weight
        keep = w.new_empty(w.shape[0], 1).bernoulli_(1.0 - p) / (1.0 - p)  # (V, 1): a dropped word is all zeros
        return F.embedding(ids, w * keep)

    def _lstm_layerwise(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        """The LSTM one layer at a time, with locked dropout between layers and DropConnect on W_hh."""
        c = self.config
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        h0, c0 = state
        hs, cs = [], []
        for k in range(c.num_layers):
            w_hh = getattr(self.lstm, f"weight_hh_l{k}")
            if self.training and c.weight_drop > 0:
                w_hh = F.dropout(w_hh, c.weight_drop, True)  # one mask of the weights for the whole window
            weights = [getattr(self.lstm, f"weight_ih_l{k}"), w_hh]
            weights += [getattr(self.lstm, f"bias_ih_l{k}"), getattr(self.lstm, f"bias_hh_l{k}")]
            hx = (h0[k : k + 1].contiguous(), c0[k : k + 1].contiguous())
            # nn.LSTM's own kernel for one layer; args: hx, weights, biases, layers, dropout, train, bidir, batch_first
            x, h, cell = torch._VF.lstm(x, hx, weights, True, 1, 0.0, self.training, False, True)
            if k < c.num_layers - 1:
                x = self._dropout(x, c.rate("between"))
            hs.append(h)
            cs.append(cell)
        return x, (torch.cat(hs), torch.cat(cs))

    def features(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The last LSTM layer's output (B, T, H), after dropout, and the state after the last step."""
        x = self._dropout(self._embed(ids), self.config.rate("input"))  # (B, T, E)
        if self._layerwise and self.training:
            out, state = self._lstm_layerwise(x, state)
        else:
            out, state = self.lstm(x, state)  # (B, T, H)
        return self._dropout(out, self.config.rate("output")), state

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        out, state = self.features(ids, state)
        return self.decoder(out), state  # (B, T, V)


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu` or `cuda`; ValueError for anything else or a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def detach_state(state: State) -> State:
    """Cut the graph at a window boundary: truncated BPTT carries the values, not the history."""
    return state[0].detach(), state[1].detach()
