"""The adaptive-softmax decoder: an exact distribution over the whole vocabulary, served by the same paths
as the full softmax; and the checkpoint format that stores it (version 2), beside version 1."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from lm.model import LSTMLanguageModel, ModelConfig
from lm.scoring import next_token_logprobs, score_tokens
from lm.vocab import Vocabulary

V = 40
CUTOFFS = (8, 20)


def adaptive_model(seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    model = LSTMLanguageModel(ModelConfig(V, 6, 8, 2, adaptive_cutoffs=CUTOFFS, adaptive_div_value=2.0))
    model.init_weights(0.5)
    return model.eval()


def dense_log_probs(model: LSTMLanguageModel, h: torch.Tensor) -> torch.Tensor:
    """The adaptive softmax's distribution recomputed from its weights by hand: the head's softmax over the
    shortlist and one entry per cluster, times each cluster's own softmax over its words (Grave et al. 2017)."""
    sd = model.state_dict()
    head = torch.log_softmax(h @ sd["decoder.head.weight"].T + sd["decoder.head.bias"], -1)  # (N, 8 + 2)
    parts = [head[:, : CUTOFFS[0]]]
    for k in range(len(CUTOFFS)):
        proj = h @ sd[f"decoder.tail.{k}.0.weight"].T
        words = torch.log_softmax(proj @ sd[f"decoder.tail.{k}.1.weight"].T, -1)
        parts.append(head[:, CUTOFFS[0] + k : CUTOFFS[0] + k + 1] + words)
    return torch.cat(parts, -1)


def test_log_probs_are_exact_and_sum_to_one() -> None:
    model = adaptive_model()
    h = torch.randn(5, 8)
    lp = model.log_probs(h)
    assert lp.shape == (5, V) and lp.dtype == torch.float32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(lp, dense_log_probs(model, h), atol=1e-5)


def test_training_loss_is_the_mean_nll_of_the_same_distribution() -> None:
    model = adaptive_model()
    h, y = torch.randn(7, 8), torch.tensor([0, 3, 8, 12, 19, 20, 39])  # head, both clusters, both ends
    expected = -dense_log_probs(model, h).gather(1, y[:, None]).mean()
    assert model.loss(h, y).item() == pytest.approx(expected.item(), abs=1e-5)


def test_scoring_paths_use_the_full_distribution() -> None:
    model = adaptive_model()
    seqs = [[1, 5, 9, 30, 2], [3, 25]]
    with torch.no_grad():
        feats, _ = model.features(torch.tensor([seqs[0]]))
    reference = dense_log_probs(model, feats[0])  # (5, V): the distribution after each token
    scores = score_tokens(model, seqs, ranks=True)
    expected = reference[torch.arange(4), torch.tensor(seqs[0][1:])]
    assert torch.allclose(scores[0].logprobs, expected, atol=1e-5)
    for t, target in enumerate(seqs[0][1:]):
        assert scores[0].ranks[t].item() == int((reference[t] > reference[t, target]).sum()) + 1
    nxt = next_token_logprobs(model, [seqs[0]])
    assert torch.allclose(nxt[0], reference[-1], atol=1e-5)
    assert math.isclose(nxt[0].exp().sum().item(), 1.0, abs_tol=1e-5)


def test_config_refuses_bad_cutoffs() -> None:
    with pytest.raises(ValueError, match="increasing"):
        ModelConfig(V, 8, 8, 1, adaptive_cutoffs=(20, 8))
    with pytest.raises(ValueError, match="vocab_size - 1"):
        ModelConfig(V, 8, 8, 1, adaptive_cutoffs=(8, V))
    with pytest.raises(ValueError, match="tie_weights"):
        ModelConfig(V, 8, 8, 1, tie_weights=True, adaptive_cutoffs=(8,))


def test_version_2_checkpoint_round_trip(tmp_path) -> None:
    vocab = Vocabulary(["<unk>", "<eos>", *(f"w{i}" for i in range(V - 2))])
    model = adaptive_model()
    path = save_checkpoint(tmp_path / "ada", model, vocab, tokenizer={"name": "words", "lowercase": True})
    meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert meta["format"] == "lstm-lm/2"
    assert meta["adaptive_cutoffs"] == list(CUTOFFS) and meta["adaptive_div_value"] == 2.0
    assert meta["tokenizer"] == {"name": "words", "lowercase": True}
    ckpt = load_checkpoint(path)
    assert ckpt.config == model.config
    h = torch.randn(3, 8)
    assert torch.equal(ckpt.model.log_probs(h), model.log_probs(h))


def test_version_2_checkpoint_with_a_wrong_cluster_shape_is_refused(tmp_path) -> None:
    vocab = Vocabulary(["<unk>", "<eos>", *(f"w{i}" for i in range(V - 2))])
    path = save_checkpoint(tmp_path / "ada", adaptive_model(), vocab)
    meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    meta["adaptive_cutoffs"] = [8, 24]  # the stored clusters are 8..20 and 20..40
    (path / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"decoder\.tail\.0\.1\.weight has shape"):
        load_checkpoint(path)


def test_version_1_checkpoint_still_loads(tiny_checkpoint) -> None:
    """A file written before version 2: format lstm-lm/1, no tokenizer, no adaptive fields."""
    path = tiny_checkpoint.path
    meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    meta["format"] = "lstm-lm/1"
    for key in ("tokenizer", "adaptive_cutoffs", "adaptive_div_value"):
        del meta[key]
    meta["weights_sha256"] = sha256_file(path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    ckpt = load_checkpoint(path)
    assert not ckpt.config.adaptive
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(ckpt.model(ids)[0], tiny_checkpoint.model(ids)[0])
