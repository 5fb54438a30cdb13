"""Training configurations: Zaremba et al. (2014) / the TF `ptb_word_lm` tutorial, exactly, plus a tiny `test`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from trainer.errors import TrainerError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; stored in the checkpoint's config.json under `training`."""

    name: str
    num_layers: int
    hidden_size: int
    num_steps: int  # truncated-BPTT window length
    batch_size: int
    init_scale: float  # every parameter uniform in [-init_scale, init_scale]
    lr: float
    lr_decay: float
    decay_after: int  # lr stays at `lr` for epochs 1 .. decay_after (the tutorial's `max_epoch`)
    max_epochs: int  # the tutorial's `max_max_epoch`
    dropout: float  # 1 - keep_prob
    max_grad_norm: float
    embed_size: int | None = None  # None: same as hidden_size (as in the paper)
    # Beyond Zaremba (all off by default; see lm/model.py and trainer/averaging.py):
    tie_weights: bool = False
    locked_dropout: bool = False
    dropout_input: float | None = None  # None: `dropout`
    dropout_between: float | None = None
    dropout_output: float | None = None
    embed_dropout: float = 0.0
    weight_drop: float = 0.0
    asgd_start: int | None = None  # average the SGD iterates from this epoch on
    bf16: bool = False  # bf16 autocast for the training forward pass (evaluation is always float32)

    @property
    def embedding_size(self) -> int:
        return self.embed_size if self.embed_size is not None else self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS: dict[str, TrainConfig] = {
    c.name: c
    for c in (
        TrainConfig("small", 2, 200, 20, 20, 0.1, 1.0, 0.5, 4, 13, 0.0, 5.0),
        TrainConfig("medium", 2, 650, 35, 20, 0.05, 1.0, 0.8, 6, 39, 0.5, 5.0),
        TrainConfig("large", 2, 1500, 35, 20, 0.04, 1.0, 1 / 1.15, 14, 55, 0.65, 10.0),
        # Beyond Zaremba, sized for a 2-core CPU (about an hour) and a <= 30 MB checkpoint (2 x V x H floats):
        # tied weights, locked dropout, word-level embedding dropout, DropConnect on W_hh, bf16 autocast, and
        # the large config's schedule shape compressed into 40 epochs.
        TrainConfig(
            name="cpu",
            num_layers=2,
            hidden_size=300,
            num_steps=35,
            batch_size=20,
            init_scale=0.075,
            lr=1.0,
            lr_decay=1 / 1.15,
            decay_after=12,
            max_epochs=40,
            dropout=0.35,
            max_grad_norm=5.0,
            tie_weights=True,
            locked_dropout=True,
            dropout_between=0.2,
            embed_dropout=0.05,
            weight_drop=0.15,
            bf16=True,
        ),
        # A few seconds on a CPU: for tests and smoke runs, not for results.
        TrainConfig("test", 2, 16, 5, 4, 0.1, 1.0, 0.5, 1, 2, 0.0, 5.0),
    )
}


def get_config(name: str, **overrides: object) -> TrainConfig:
    try:
        config = CONFIGS[name]
    except KeyError:
        raise TrainerError(f"unknown config {name!r}; choose one of: {', '.join(CONFIGS)}") from None
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def lr_at(epoch: int, config: TrainConfig) -> float:
    """Learning rate of `epoch` (counted from 1): lr * lr_decay ** max(epoch - decay_after, 0), as in the tutorial."""
    if epoch < 1:
        raise ValueError(f"epochs are counted from 1, got {epoch}")
    return config.lr * config.lr_decay ** max(epoch - config.decay_after, 0)
