"""The training-time options beyond Zaremba: each does what its paper says, and none changes inference."""

from __future__ import annotations

import pytest
import torch

from lm.checkpoint import load_checkpoint, save_checkpoint
from lm.model import LSTMLanguageModel, ModelConfig, native_bf16
from lm.vocab import Vocabulary

V, H = 30, 12


def make(**options) -> LSTMLanguageModel:
    torch.manual_seed(0)
    model = LSTMLanguageModel(ModelConfig(vocab_size=V, embed_size=H, hidden_size=H, num_layers=2, **options))
    model.init_weights(0.3)
    return model


def ids(batch: int = 3, steps: int = 7) -> torch.Tensor:
    return torch.randint(0, V, (batch, steps), generator=torch.Generator().manual_seed(1))


def test_locked_dropout_uses_one_mask_across_time() -> None:
    model = make(locked_dropout=True, dropout=0.5).train()
    x = torch.ones(4, 9, H)
    y = model._dropout(x, 0.5)
    zeros = y == 0
    # Each (sequence, feature) is dropped at every step or at none.
    assert torch.equal(zeros, zeros[:, :1, :].expand_as(zeros))
    assert zeros.any() and (~zeros).any()
    assert torch.allclose(y[~zeros], torch.full_like(y[~zeros], 2.0))


def test_standard_dropout_differs_across_time() -> None:
    model = make(dropout=0.5).train()
    zeros = model._dropout(torch.ones(4, 50, H), 0.5) == 0
    assert not torch.equal(zeros, zeros[:, :1, :].expand_as(zeros))


def test_embedding_dropout_drops_whole_words() -> None:
    model = make(embed_dropout=0.5).train()
    torch.manual_seed(3)
    x = torch.arange(V).repeat(2, 1)  # every word twice, in two rows
    e = model._embed(x)  # (2, V, H)
    dropped = (e == 0).all(dim=-1)  # a dropped word is all zeros, wherever it occurs
    assert dropped.any() and (~dropped).any()
    assert torch.equal(dropped[0], dropped[1])
    kept = ~dropped[0]
    assert torch.allclose(e[0, kept], model.embedding.weight[kept] * 2.0)


def test_weight_drop_masks_the_recurrent_weights_in_training_only() -> None:
    model = make(weight_drop=0.5)
    raw = model.lstm.weight_hh_l0.detach().clone()
    x = ids()
    model.train()
    torch.manual_seed(5)
    out_a, _ = model(x)
    torch.manual_seed(6)
    out_b, _ = model(x)
    assert not torch.allclose(out_a, out_b)  # different DropConnect masks, different outputs
    assert torch.equal(model.lstm.weight_hh_l0, raw)  # the parameter itself is never overwritten
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


def test_layerwise_path_equals_nn_lstm_without_masks() -> None:
    """With every rate at 0 the layer-by-layer kernel computes exactly what nn.LSTM does."""
    model = make(locked_dropout=True).train()
    x = model.embedding(ids())
    state = model.initial_state(3)
    a, (ha, ca) = model._lstm_layerwise(x, state)
    b, (hb, cb) = model.lstm(x, state)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(ha, hb, atol=1e-6) and torch.allclose(ca, cb, atol=1e-6)


def test_options_do_not_change_inference() -> None:
    plain = make()
    regularised = make(locked_dropout=True, dropout=0.4, embed_dropout=0.2, weight_drop=0.3)
    regularised.load_state_dict(plain.state_dict())
    plain.eval()
    regularised.eval()
    assert torch.equal(plain(ids())[0], regularised(ids())[0])


def test_separate_rates_default_to_dropout() -> None:
    c = ModelConfig(V, H, H, 2, dropout=0.3, dropout_between=0.1)
    assert (c.rate("input"), c.rate("between"), c.rate("output")) == (0.3, 0.1, 0.3)
    with pytest.raises(ValueError, match="weight_drop"):
        ModelConfig(V, H, H, 2, weight_drop=1.0)


def test_tied_weights_share_one_tensor_and_learn_together() -> None:
    model = make(tie_weights=True).train()
    assert model.decoder.weight is model.embedding.weight
    assert model.num_parameters() == sum(p.numel() for p in make().parameters()) - V * H
    out, _ = model(ids())
    out.sum().backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    assert torch.equal(model.decoder.weight, model.embedding.weight)


def test_tied_regularised_checkpoint_round_trips(tmp_path) -> None:
    model = make(tie_weights=True, locked_dropout=True, dropout=0.3, embed_dropout=0.1, weight_drop=0.2)
    words = ["<unk>", "<eos>", *[f"w{i}" for i in range(V - 2)]]
    save_checkpoint(tmp_path / "ck", model, Vocabulary(words))
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config == model.config
    assert ck.model.decoder.weight is ck.model.embedding.weight
    model.eval()
    assert torch.equal(ck.model(ids())[0], model(ids())[0])


def test_bf16_autocast_forward_is_close_to_float32_where_native() -> None:
    """Where the CPU runs bf16 natively, the autocast forward pass is bf16 and close to float32; elsewhere oneDNN
    cannot run the LSTM under bf16 autocast at all, which is why the trainer falls back to float32 there."""
    model = make().eval()
    x = ids()
    ref = torch.log_softmax(model(x)[0], -1)
    if not native_bf16("cpu"):
        with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        return
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)[0]
    got = torch.log_softmax(low.float(), -1)
    assert low.dtype == torch.bfloat16
    assert (got - ref).abs().max() < 0.1
