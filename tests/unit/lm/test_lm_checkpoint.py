"""Checkpoint directory: exact round trip, atomic replacement, and refusal of every kind of damage."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lm.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
    update_metrics,
)
from lm.vocab import Vocabulary


def read_meta(path: Path) -> dict:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def write_meta(path: Path, meta: dict) -> None:
    (path / "config.json").write_text(json.dumps(meta), encoding="utf-8")


def rewrite_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace model.safetensors and update config.json's sha256, so that only the content check can fire."""
    save_file(tensors, str(path / "model.safetensors"))
    meta = read_meta(path)
    meta["weights_sha256"] = sha256_file(path / "model.safetensors")
    write_meta(path, meta)


def rewrite_vocab(path: Path, text: str) -> None:
    """Replace vocab.txt and update config.json's sha256, so that only the vocabulary's own checks can fire."""
    (path / "vocab.txt").write_text(text, encoding="utf-8")
    meta = read_meta(path)
    meta["vocab_sha256"] = sha256_file(path / "vocab.txt")
    write_meta(path, meta)


def test_round_trip_is_exact(tiny_checkpoint) -> None:
    ckpt = load_checkpoint(tiny_checkpoint.path)
    original = tiny_checkpoint.model.state_dict()
    loaded = ckpt.model.state_dict()
    assert loaded.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name
        assert loaded[name].dtype == torch.float32
    assert ckpt.vocab == tiny_checkpoint.vocab
    assert ckpt.config == tiny_checkpoint.model.config
    assert ckpt.training == {"name": "tiny", "seed": 0}
    assert ckpt.metrics == {"valid_ppl": 12.5, "test_ppl": 13.25}
    assert ckpt.name == "ckpt"
    assert not ckpt.model.training  # eval mode: scoring must not apply dropout
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(ckpt.model(ids)[0], tiny_checkpoint.model(ids)[0])


def test_files_follow_the_documented_format(tiny_checkpoint) -> None:
    path = tiny_checkpoint.path
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    meta = read_meta(path)
    config = tiny_checkpoint.model.config
    assert meta["format"] == "lstm-lm/2" == FORMAT
    assert meta["tokenizer"] == {"name": "ptb"}
    for key in ("vocab_size", "embed_size", "hidden_size", "num_layers", "tie_weights", "dropout"):
        assert meta[key] == getattr(config, key), key
    assert meta["weights_sha256"] == sha256_file(path / "model.safetensors")
    assert (path / "vocab.txt").read_text(encoding="utf-8").splitlines() == tiny_checkpoint.vocab.itos
    tensors = load_file(str(path / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == config.tensor_shapes()
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_tied_model_round_trips_and_stays_tied(tmp_path: Path, tiny_vocab: Vocabulary, make_model) -> None:
    model = make_model(vocab_size=len(tiny_vocab), embed_size=8, hidden_size=8, tie_weights=True)
    save_checkpoint(tmp_path / "tied", model, tiny_vocab)
    ckpt = load_checkpoint(tmp_path / "tied")
    assert ckpt.config.tie_weights
    assert ckpt.model.decoder.weight is ckpt.model.embedding.weight
    assert torch.equal(ckpt.model.embedding.weight, model.embedding.weight)
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor), name


def test_tied_checkpoint_with_different_decoder_is_refused(tmp_path: Path, tiny_vocab: Vocabulary, make_model) -> None:
    model = make_model(vocab_size=len(tiny_vocab), embed_size=8, hidden_size=8, tie_weights=True)
    path = save_checkpoint(tmp_path / "tied", model, tiny_vocab)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["decoder.weight"] = tensors["decoder.weight"] + 1.0
    rewrite_weights(path, tensors)
    with pytest.raises(CheckpointError, match="tie_weights"):
        load_checkpoint(path)


def test_save_refuses_a_vocabulary_of_the_wrong_size(tmp_path: Path, make_model) -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        save_checkpoint(tmp_path / "x", make_model(vocab_size=20), Vocabulary(["<unk>", "<eos>", "a"]))


def test_save_replaces_a_checkpoint_and_keeps_other_files(tiny_checkpoint, make_model) -> None:
    path = tiny_checkpoint.path
    (path / "train_log.jsonl").write_text('{"epoch": 1}\n', encoding="utf-8")
    newer = make_model(vocab_size=len(tiny_checkpoint.vocab), seed=99)
    save_checkpoint(path, newer, tiny_checkpoint.vocab, metrics={"valid_ppl": 1.5})
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt.model.decoder.bias, newer.decoder.bias)
    assert not torch.equal(ckpt.model.decoder.bias, tiny_checkpoint.model.decoder.bias)
    assert ckpt.metrics == {"valid_ppl": 1.5}
    assert (path / "train_log.jsonl").read_text(encoding="utf-8") == '{"epoch": 1}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # no .tmp or .old left behind


def test_update_metrics_merges_and_keeps_weights_valid(tiny_checkpoint) -> None:
    update_metrics(tiny_checkpoint.path, {"test_ppl": 9.0, "best_epoch": 3})
    ckpt = load_checkpoint(tiny_checkpoint.path)
    assert ckpt.metrics == {"valid_ppl": 12.5, "test_ppl": 9.0, "best_epoch": 3}


def test_loader_never_unpickles(tiny_checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint loader must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    ckpt = load_checkpoint(tiny_checkpoint.path)
    assert torch.equal(ckpt.model.embedding.weight, tiny_checkpoint.model.embedding.weight)


def test_flipped_byte_in_weights_is_refused(tiny_checkpoint) -> None:
    weights = tiny_checkpoint.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's float data: still a well-formed file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors") as e:
        load_checkpoint(tiny_checkpoint.path)
    assert "sha256" in str(e.value)


def test_truncated_weights_are_refused(tiny_checkpoint) -> None:
    weights = tiny_checkpoint.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tiny_checkpoint.path)


def test_truncated_weights_with_matching_sha_are_refused_as_unreadable(tiny_checkpoint) -> None:
    path = tiny_checkpoint.path
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    meta = read_meta(path)
    meta["weights_sha256"] = sha256_file(weights)
    write_meta(path, meta)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*not a readable safetensors"):
        load_checkpoint(path)


def test_missing_weights_are_refused(tiny_checkpoint) -> None:
    (tiny_checkpoint.path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_checkpoint(tiny_checkpoint.path)


def test_config_hidden_size_disagreeing_with_tensors_is_refused(tiny_checkpoint) -> None:
    path = tiny_checkpoint.path
    meta = read_meta(path)
    meta["hidden_size"] = meta["hidden_size"] + 4  # the weights (and their sha256) are untouched
    write_meta(path, meta)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor .* has shape"):
        load_checkpoint(path)


def test_tensor_of_wrong_shape_is_refused(tiny_checkpoint) -> None:
    path = tiny_checkpoint.path
    tensors = load_file(str(path / "model.safetensors"))
    tensors["lstm.weight_hh_l1"] = tensors["lstm.weight_hh_l1"][:, :-1].contiguous()
    rewrite_weights(path, tensors)
    with pytest.raises(CheckpointError, match=r"lstm\.weight_hh_l1 has shape \[32, 7\].*\[32, 8\]"):
        load_checkpoint(path)


def test_missing_or_extra_tensor_is_refused(tiny_checkpoint) -> None:
    path = tiny_checkpoint.path
    tensors = load_file(str(path / "model.safetensors"))
    tensors["extra.weight"] = tensors.pop("decoder.bias")
    rewrite_weights(path, tensors)
    with pytest.raises(CheckpointError, match=r"missing \['decoder\.bias'\], unexpected \['extra\.weight'\]"):
        load_checkpoint(path)


def test_non_float32_tensor_is_refused(tiny_checkpoint) -> None:
    path = tiny_checkpoint.path
    tensors = load_file(str(path / "model.safetensors"))
    tensors["decoder.bias"] = tensors["decoder.bias"].double()
    rewrite_weights(path, tensors)
    with pytest.raises(CheckpointError, match="float32"):
        load_checkpoint(path)


def test_missing_vocab_is_refused(tiny_checkpoint) -> None:
    (tiny_checkpoint.path / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match=r"vocab\.txt: missing"):
        load_checkpoint(tiny_checkpoint.path)


def test_vocab_of_the_wrong_size_is_refused(tiny_checkpoint) -> None:
    vocab_path = tiny_checkpoint.path / "vocab.txt"
    rewrite_vocab(tiny_checkpoint.path, vocab_path.read_text(encoding="utf-8") + "extra\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt.*vocab_size"):
        load_checkpoint(tiny_checkpoint.path)


def test_invalid_vocab_file_is_refused(tiny_checkpoint) -> None:
    rewrite_vocab(tiny_checkpoint.path, "a\nb\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: .*<unk>"):
        load_checkpoint(tiny_checkpoint.path)


def test_config_records_the_vocabulary_digest(tiny_checkpoint) -> None:
    assert read_meta(tiny_checkpoint.path)["vocab_sha256"] == sha256_file(tiny_checkpoint.path / "vocab.txt")


def test_vocab_with_two_lines_swapped_is_refused(tiny_checkpoint) -> None:
    """Same tokens, same size: only the digest tells that every id now means another word."""
    vocab_path = tiny_checkpoint.path / "vocab.txt"
    lines = vocab_path.read_text(encoding="utf-8").splitlines()
    lines[3], lines[4] = lines[4], lines[3]
    vocab_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: sha256 .* vocab_sha256"):
        load_checkpoint(tiny_checkpoint.path)


def test_vocab_saved_with_a_byte_order_mark_is_refused(tiny_checkpoint) -> None:
    vocab_path = tiny_checkpoint.path / "vocab.txt"
    marked = "\ufeff" + vocab_path.read_text(encoding="utf-8")
    vocab_path.write_text(marked, encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: sha256"):
        load_checkpoint(tiny_checkpoint.path)
    rewrite_vocab(tiny_checkpoint.path, marked)  # a digest taken of the marked file: the mark itself is refused
    with pytest.raises(CheckpointError, match=r"byte-order mark"):
        load_checkpoint(tiny_checkpoint.path)


def test_checkpoint_without_a_vocab_digest_loads_with_a_warning(tiny_checkpoint, caplog) -> None:
    meta = read_meta(tiny_checkpoint.path)
    del meta["vocab_sha256"]
    write_meta(tiny_checkpoint.path, meta)
    with caplog.at_level("WARNING", logger="lm.checkpoint"):
        ckpt = load_checkpoint(tiny_checkpoint.path)
    assert ckpt.vocab == tiny_checkpoint.vocab
    assert "no vocab_sha256" in caplog.text


def test_bad_json_is_refused(tiny_checkpoint) -> None:
    (tiny_checkpoint.path / "config.json").write_text('{"format": "lstm-lm/1", ', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(tiny_checkpoint.path)


def test_json_that_is_not_an_object_is_refused(tiny_checkpoint) -> None:
    (tiny_checkpoint.path / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(tiny_checkpoint.path)


@pytest.mark.parametrize("fmt", ["lstm-lm/3", None, "pytorch"])
def test_wrong_format_is_refused(tiny_checkpoint, fmt) -> None:
    meta = read_meta(tiny_checkpoint.path)
    if fmt is None:
        del meta["format"]
    else:
        meta["format"] = fmt
    write_meta(tiny_checkpoint.path, meta)
    with pytest.raises(CheckpointError, match=r"config\.json: format"):
        load_checkpoint(tiny_checkpoint.path)


@pytest.mark.parametrize("change", [{"vocab_size": "12"}, {"num_layers": 0}, {"dropout": 2.0}])
def test_invalid_model_config_is_refused(tiny_checkpoint, change: dict) -> None:
    meta = read_meta(tiny_checkpoint.path)
    write_meta(tiny_checkpoint.path, {**meta, **change})
    with pytest.raises(CheckpointError, match=r"config\.json: invalid model config"):
        load_checkpoint(tiny_checkpoint.path)


def test_missing_config_key_is_refused(tiny_checkpoint) -> None:
    meta = read_meta(tiny_checkpoint.path)
    del meta["hidden_size"]
    write_meta(tiny_checkpoint.path, meta)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(tiny_checkpoint.path)


def test_missing_directory_or_config_is_refused(tmp_path: Path, tiny_checkpoint) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")
    (tiny_checkpoint.path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_checkpoint(tiny_checkpoint.path)
