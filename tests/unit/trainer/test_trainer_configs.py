"""Configurations: exactly the paper's table in docs/trainer.md (Zaremba et al.), and the lr schedule."""

from __future__ import annotations

import pytest

from trainer.configs import CONFIGS, get_config, lr_at
from trainer.errors import TrainerError

# docs/trainer.md: layers, hidden, steps, batch, init, lr, decay, decay after epoch, epochs, dropout, clip.
TABLE = {
    "small": (2, 200, 20, 20, 0.1, 1.0, 0.5, 4, 13, 0.0, 5),
    "medium": (2, 650, 35, 20, 0.05, 1.0, 0.8, 6, 39, 0.5, 5),
    "large": (2, 1500, 35, 20, 0.04, 1.0, 1 / 1.15, 14, 55, 0.65, 10),
}
FIELDS = (
    "num_layers",
    "hidden_size",
    "num_steps",
    "batch_size",
    "init_scale",
    "lr",
    "lr_decay",
    "decay_after",
    "max_epochs",
    "dropout",
    "max_grad_norm",
)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_configs_carry_the_design_table(name: str) -> None:
    config = get_config(name)
    assert config.name == name
    for field, expected in zip(FIELDS, TABLE[name], strict=True):
        assert getattr(config, field) == pytest.approx(expected, rel=1e-12, abs=0), field
    # The paper's networks: embedding as wide as the LSTM, untied.
    assert config.embedding_size == config.hidden_size
    assert config.tie_weights is False


def test_the_test_config_is_small() -> None:
    config = get_config("test")
    assert config.hidden_size <= 32 and config.batch_size * config.num_steps <= 100 and config.max_epochs <= 3


def test_unknown_config_raises_trainer_error() -> None:
    with pytest.raises(TrainerError, match="unknown config 'huge'") as e:
        get_config("huge")
    for name in CONFIGS:
        assert name in str(e.value)


def test_overrides_replace_fields_and_none_keeps_them() -> None:
    config = get_config("small", dropout=0.25, max_epochs=None)
    assert config.dropout == 0.25
    assert config.max_epochs == 13
    assert get_config("small").dropout == 0.0  # the table entry itself is not changed


@pytest.mark.parametrize(
    ("epoch", "lr"),
    [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 0.5), (6, 0.25), (7, 0.125), (13, 0.5**9)],
)
def test_small_lr_schedule(epoch: int, lr: float) -> None:
    assert lr_at(epoch, get_config("small")) == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize(("epoch", "lr"), [(1, 1.0), (6, 1.0), (7, 0.8), (8, 0.64)])
def test_medium_lr_schedule(epoch: int, lr: float) -> None:
    assert lr_at(epoch, get_config("medium")) == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize(("epoch", "lr"), [(1, 1.0), (14, 1.0), (15, 1 / 1.15), (16, 1 / 1.15**2), (55, 1.15**-41)])
def test_large_lr_schedule(epoch: int, lr: float) -> None:
    assert lr_at(epoch, get_config("large")) == pytest.approx(lr, rel=1e-9)


def test_epochs_count_from_one() -> None:
    with pytest.raises(ValueError):
        lr_at(0, get_config("small"))


def test_to_dict_holds_every_field() -> None:
    d = get_config("medium").to_dict()
    assert d["name"] == "medium"
    assert all(field in d for field in FIELDS)
