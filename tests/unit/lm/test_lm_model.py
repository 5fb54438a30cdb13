"""The network: config validation, tensor names and shapes, and the LSTM state carried across windows."""

from __future__ import annotations

import pytest
import torch

from lm.model import LSTMLanguageModel, ModelConfig, detach_state


def test_forward_shapes(make_model) -> None:
    model = make_model(vocab_size=12, embed_size=6, hidden_size=8, num_layers=3)
    ids = torch.randint(0, 12, (4, 7))
    logits, (h, c) = model(ids)
    assert logits.shape == (4, 7, 12)
    assert h.shape == c.shape == (3, 4, 8)


def test_state_dict_names_and_shapes_match_the_documented_format(make_model) -> None:
    model = make_model(vocab_size=12, embed_size=6, hidden_size=8, num_layers=2)
    expected = {
        "embedding.weight": (12, 6),
        "lstm.weight_ih_l0": (32, 6),
        "lstm.weight_hh_l0": (32, 8),
        "lstm.bias_ih_l0": (32,),
        "lstm.bias_hh_l0": (32,),
        "lstm.weight_ih_l1": (32, 8),
        "lstm.weight_hh_l1": (32, 8),
        "lstm.bias_ih_l1": (32,),
        "lstm.bias_hh_l1": (32,),
        "decoder.weight": (12, 8),
        "decoder.bias": (12,),
    }
    assert model.config.tensor_shapes() == expected
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_init_weights_is_uniform_within_scale(make_model) -> None:
    model = make_model(init_scale=0.05)
    for name, p in model.named_parameters():
        assert p.abs().max().item() <= 0.05, name
        assert p.abs().max().item() > 0.01, name  # really re-initialised, not left at zero
    # nn.Embedding's default init is N(0, 1): init_weights must have replaced it.
    assert model.embedding.weight.std().item() < 0.05


def test_tied_weights_share_one_parameter(make_model) -> None:
    model = make_model(embed_size=8, hidden_size=8, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    untied = make_model(embed_size=8, hidden_size=8)
    assert model.num_parameters() == untied.num_parameters() - untied.decoder.weight.numel()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 0},
        {"hidden_size": -1},
        {"num_layers": 1.5},
        {"embed_size": True},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"tie_weights": True, "embed_size": 4, "hidden_size": 8},
    ],
)
def test_invalid_config_is_refused(kwargs: dict) -> None:
    base = {"vocab_size": 10, "embed_size": 8, "hidden_size": 8, "num_layers": 2}
    with pytest.raises(ValueError):
        ModelConfig(**{**base, **kwargs})


def test_config_dict_round_trip() -> None:
    config = ModelConfig(10, 4, 6, 3, 0.25, False)
    assert ModelConfig.from_dict({**config.to_dict(), "format": "ignored", "metrics": {}}) == config


def test_initial_state_is_zero() -> None:
    model = LSTMLanguageModel(ModelConfig(10, 4, 6, 3))
    h, c = model.initial_state(5)
    assert h.shape == c.shape == (3, 5, 6)
    assert not h.any() and not c.any()
    assert h.data_ptr() != c.data_ptr()


def test_state_carried_across_windows_equals_one_pass(make_model) -> None:
    model = make_model()
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3, 12))
    with torch.no_grad():
        full, full_state = model(ids)
        first, state = model(ids[:, :5])
        second, state = model(ids[:, 5:9], state)
        third, state = model(ids[:, 9:], state)
        reset, _ = model(ids[:, 5:9])  # the same window with a fresh (zero) state
    carried = torch.cat([first, second, third], dim=1)
    torch.testing.assert_close(carried, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(state[0], full_state[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(state[1], full_state[1], rtol=0, atol=1e-6)
    # Forgetting the state changes the outputs: the state really carries information.
    assert (reset - full[:, 5:9]).abs().max().item() > 1e-3
    # An explicit zero state is the same as no state.
    with torch.no_grad():
        zero, _ = model(ids[:, 5:9], model.initial_state(3))
    torch.testing.assert_close(zero, reset, rtol=0, atol=1e-7)


def test_detach_state_keeps_values_and_cuts_the_graph(make_model) -> None:
    model = make_model().train()
    _, state = model(torch.tensor([[1, 2, 3]]))
    assert state[0].requires_grad
    detached = detach_state(state)
    assert not detached[0].requires_grad and not detached[1].requires_grad
    assert torch.equal(detached[0], state[0]) and torch.equal(detached[1], state[1])


def test_dropout_only_in_training_mode() -> None:
    torch.manual_seed(0)
    model = LSTMLanguageModel(ModelConfig(10, 8, 8, 2, dropout=0.5))
    ids = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(ids)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, _ = model(ids)
        d, _ = model(ids)
    assert not torch.equal(c, d)
