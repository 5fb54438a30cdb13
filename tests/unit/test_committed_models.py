"""The checkpoints committed under models/: they load, their recorded perplexities are exact, and the service
serves the default one with the numbers of a direct forward pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from lm.checkpoint import load_checkpoint
from service.app import create_app
from service.settings import DEFAULT_MODEL, Settings
from trainer.evaluate import evaluate_split

REPO = Path(__file__).resolve().parents[2]
COMMITTED = sorted(p.parent for p in (REPO / "models").glob("*/config.json"))


def test_the_default_model_is_committed() -> None:
    assert (REPO / DEFAULT_MODEL / "model.safetensors").is_file()
    assert REPO / DEFAULT_MODEL in COMMITTED


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_recorded_perplexities_are_exact(path: Path, ptb_dir: Path) -> None:
    """Recomputed from the committed files over the full splits, as docs/architecture.md defines them."""
    ckpt = load_checkpoint(path)
    metrics = ckpt.metrics
    for split, predictions in (("valid", 73_759), ("test", 82_429)):
        result = evaluate_split(ckpt, ptb_dir, split)
        assert result.predictions == predictions == metrics[f"{split}_predictions"]
        assert result.perplexity == pytest.approx(metrics[f"{split}_ppl"], rel=1e-6), split
    assert (path / "train_log.jsonl").is_file() and (path / "learning_curve.png").is_file()
    assert not (path / ".resume").exists()
    log = [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == ckpt.training["max_epochs_run"] and not ckpt.training["dry_run"]


def test_service_serves_the_default_model_exactly() -> None:
    ckpt = load_checkpoint(REPO / DEFAULT_MODEL)
    vocab = ckpt.vocab
    with TestClient(create_app(Settings(model=REPO / DEFAULT_MODEL))) as client:
        card = client.get("/model").json()
        assert card["metrics"]["test_ppl"] == ckpt.metrics["test_ppl"]
        assert card["parameters"] == ckpt.model.num_parameters()
        r = client.post("/score", json={"text": "The stock market rose 5%.", "per_token": True})
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert result["tokens"] == ["the", "stock", "market", "rose", "N", "N", "<eos>"]
    ids = torch.tensor([[vocab.eos_id, *vocab.encode(result["tokens"])]])
    with torch.no_grad():
        logits, _ = ckpt.model(ids[:, :-1])
    expected = torch.log_softmax(logits[0], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert result["token_logprobs"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(-expected.sum().item() / len(expected)), rel=1e-5)
