"""The checkpoint directory: `config.json` + `model.safetensors` (float32) + `vocab.txt`.

Format `lstm-lm/2` (written now) adds to `lstm-lm/1` (still read) an adaptive-softmax decoder
(`adaptive_cutoffs`, `adaptive_div_value`) and the tokenizer the model was trained with (`tokenizer`, see
lm/tokenizers.py); a version-1 file has a full softmax and PTB's tokenizer.

Loading never unpickles: the weights are safetensors, everything else is JSON or text. The loader checks the
sha256 of the weights file, every tensor's name and shape against the config, and the vocabulary size, and
raises `CheckpointError` naming the file and what is wrong. The vocabulary is checked against its own
sha256 (`vocab_sha256`): two swapped lines would otherwise serve wrong numbers silently. A checkpoint
written before that field existed still loads, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lm.model import LSTMLanguageModel, ModelConfig
from lm.vocab import Vocabulary, VocabularyError

FORMAT = "lstm-lm/2"
READABLE_FORMATS = ("lstm-lm/1", FORMAT)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"

log = logging.getLogger("lm.checkpoint")


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on the CPU), its vocabulary and its config.json."""

    path: Path
    model: LSTMLanguageModel
    vocab: Vocabulary
    config: ModelConfig
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics(self) -> dict:
        """config.json's `metrics` ({} where it is missing, null or not an object)."""
        return _object(self.meta.get("metrics"))

    @property
    def training(self) -> dict:
        """config.json's `training` ({} where it is missing, null or not an object)."""
        return _object(self.meta.get("training"))


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint_files(
    directory: Path,
    model: LSTMLanguageModel,
    vocab: Vocabulary,
    training: dict | None = None,
    metrics: dict | None = None,
    tokenizer: dict | None = None,
) -> None:
    """Write the three files into an existing, empty directory; `tokenizer` is its spec (lm.tokenizers)."""
    config = model.config
    if len(vocab) != config.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} tokens, the model {config.vocab_size}")
    # Every tensor stored on its own (a tied decoder is written as a copy), float32, contiguous.
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    os.chmod(directory / WEIGHTS_FILE, 0o644)  # safetensors creates it owner-only; a release is for reading
    vocab.save(directory / VOCAB_FILE)
    meta = {
        "format": FORMAT,
        **config.to_dict(),
        "tokenizer": tokenizer or {"name": "ptb"},
        "training": training or {},
        "metrics": metrics or {},
        "weights_sha256": sha256_file(directory / WEIGHTS_FILE),
        "vocab_sha256": sha256_file(directory / VOCAB_FILE),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def save_checkpoint(
    path: str | Path,
    model: LSTMLanguageModel,
    vocab: Vocabulary,
    training: dict | None = None,
    metrics: dict | None = None,
    tokenizer: dict | None = None,
) -> Path:
    """Write a checkpoint directory atomically: a reader sees the old checkpoint or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir()
    write_checkpoint_files(tmp, model, vocab, training, metrics, tokenizer)
    # Keep whatever else lives in the directory (training log, curve, resume state).
    if path.exists():
        for child in path.iterdir():
            if child.name not in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE):
                os.replace(child, tmp / child.name)
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def update_metrics(path: str | Path, metrics: dict) -> None:
    """Merge `metrics` into a checkpoint's config.json (the weights are untouched)."""
    cfg_path = Path(path) / CONFIG_FILE
    meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    meta["metrics"] = {**_object(meta.get("metrics")), **metrics}
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, cfg_path)


def read_config(path: str | Path) -> dict:
    cfg_path = Path(path) / CONFIG_FILE
    if not Path(path).is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    if meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{cfg_path}: format is {meta.get('format')!r}, expected one of {', '.join(READABLE_FORMATS)}"
        )
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint directory; the model comes back in eval mode on the CPU."""
    path = Path(path)
    meta = read_config(path)
    cfg_path = path / CONFIG_FILE
    try:
        config = ModelConfig.from_dict(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: invalid model config ({e})") from None

    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing")
    digest = sha256_file(weights_path)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(
            f"{weights_path}: sha256 {digest[:12]}... does not match config.json's weights_sha256 "
            f"{str(meta.get('weights_sha256'))[:12]}... (corrupt, truncated or replaced)"
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e})") from None

    expected = config.tensor_shapes()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{weights_path}: tensors missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"{weights_path}: tensor {name} has shape {list(t.shape)}, config.json implies {list(shape)}"
            )
        if t.dtype != torch.float32:
            raise CheckpointError(f"{weights_path}: tensor {name} is {t.dtype}, expected float32")
    if config.tie_weights and not torch.equal(tensors["embedding.weight"], tensors["decoder.weight"]):
        raise CheckpointError(f"{weights_path}: tie_weights is set but decoder.weight != embedding.weight")

    vocab_path = path / VOCAB_FILE
    if not vocab_path.is_file():
        raise CheckpointError(f"{vocab_path}: missing")
    _check_vocab_digest(vocab_path, meta.get("vocab_sha256"))
    try:
        vocab = Vocabulary.load(vocab_path)
    except VocabularyError as e:
        raise CheckpointError(str(e)) from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{vocab_path}: {len(vocab)} tokens, config.json says vocab_size {config.vocab_size}")

    model = LSTMLanguageModel(config)
    model.load_state_dict(tensors)
    model.eval()
    return Checkpoint(path=path, model=model, vocab=vocab, config=config, meta=meta)


def _check_vocab_digest(vocab_path: Path, recorded: object) -> None:
    """Refuse a vocab.txt that is not the one the weights were trained with (reordered, re-encoded, edited)."""
    if recorded is None:
        log.warning("%s: config.json records no vocab_sha256; the vocabulary cannot be verified", vocab_path)
        return
    digest = sha256_file(vocab_path)
    if digest != recorded:
        raise CheckpointError(
            f"{vocab_path}: sha256 {digest[:12]}... does not match config.json's vocab_sha256 "
            f"{str(recorded)[:12]}... (edited, reordered or re-encoded: ids would map to the wrong words)"
        )
