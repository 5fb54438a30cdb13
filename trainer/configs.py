"""Training configurations: Zaremba et al. (2014) / the TF `ptb_word_lm` tutorial, exactly, plus a tiny `test`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from lm.model import ModelConfig
from trainer.errors import TrainerError

# Adaptive-softmax cluster boundaries when --adaptive-softmax gives none (Grave et al. 2017 use these on
# WikiText-103's 267,735 words): the ones below the vocabulary size, or V // 2 for a small vocabulary.
DEFAULT_CUTOFFS = (2000, 10000, 50000)


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
    adaptive_softmax: bool = False  # an adaptive-softmax decoder (for vocabularies of 30,000 words and more)
    cutoffs: tuple[int, ...] = ()  # its cluster boundaries; empty: DEFAULT_CUTOFFS below the vocabulary size

    @property
    def embedding_size(self) -> int:
        return self.embed_size if self.embed_size is not None else self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    def adaptive_cutoffs(self, vocab_size: int) -> tuple[int, ...]:
        """The decoder's cluster boundaries for a vocabulary of `vocab_size` words; empty for a full softmax."""
        if not self.adaptive_softmax:
            return ()
        if self.cutoffs:
            return tuple(self.cutoffs)
        return tuple(c for c in DEFAULT_CUTOFFS if c < vocab_size - 1) or (max(1, vocab_size // 2),)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The network this config trains, for a vocabulary of `vocab_size` words."""
        try:
            return ModelConfig(
                vocab_size=vocab_size,
                embed_size=self.embedding_size,
                hidden_size=self.hidden_size,
                num_layers=self.num_layers,
                dropout=self.dropout,
                tie_weights=self.tie_weights,
                dropout_input=self.dropout_input,
                dropout_between=self.dropout_between,
                dropout_output=self.dropout_output,
                locked_dropout=self.locked_dropout,
                embed_dropout=self.embed_dropout,
                weight_drop=self.weight_drop,
                adaptive_cutoffs=self.adaptive_cutoffs(vocab_size),
            )
        except ValueError as e:
            raise TrainerError(f"config {self.name}: {e}") from None


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
