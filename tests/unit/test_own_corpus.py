"""End to end on a corpus that is not PTB: the sample corpus (Python's own documentation) trained for one
epoch with each tokenizer (one of them with an adaptive softmax), then served by the real app with its
lifespan, which must tokenize raw text as the model was trained and score it exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from lm.checkpoint import load_checkpoint
from lm.scoring import next_token_logprobs, token_logprobs
from lm.tokenizers import tokenizer_for
from lm.vocab import EOS, UNK
from service.app import create_app
from service.settings import Settings
from trainer.cli import main
from trainer.sample_corpus import write_sample_corpus

RUNS = {
    "whitespace": ["--tokenizer", "whitespace"],
    "ptb": ["--tokenizer", "ptb"],
    "words": ["--tokenizer", "words", "--lowercase", "--adaptive-softmax", "--cutoffs", "100,500"],
}
VOCAB_SIZE = 1500


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pydoc")
    write_sample_corpus(out)
    return out


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request: pytest.FixtureRequest, corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the `test` config on the first 8,000 training tokens, vocabulary of 1,500 words."""
    out = tmp_path_factory.mktemp("runs") / request.param
    argv = ["train", "--config", "test", "--data-dir", str(corpus_dir), "--max-epochs", "1", "--train-tokens", "8000"]
    argv += ["--vocab-size", str(VOCAB_SIZE), "--no-progress", "--out", str(out), *RUNS[request.param]]
    assert main(argv) == 0
    return out


def test_train_serve_and_score(trained: Path, corpus_dir: Path) -> None:
    ckpt = load_checkpoint(trained)
    tokenizer = tokenizer_for(ckpt)
    assert tokenizer.name == trained.name
    assert len(ckpt.vocab) == VOCAB_SIZE
    unk = ckpt.training["unk_tokens"]
    assert unk["valid"] > 0 and unk["test"] > 0  # a 1,500-word vocabulary leaves words out in every split
    assert ckpt.metrics["valid_ppl"] < VOCAB_SIZE / 2  # one epoch learned something: far below uniform

    text = (corpus_dir / "valid.txt").read_text(encoding="utf-8").splitlines()[0]
    words = tokenizer.tokenize(text)
    expected_tokens = [w if w in ckpt.vocab else UNK for w in words] + [EOS]
    ids = [ckpt.vocab.eos_id, *ckpt.vocab.encode(expected_tokens)]
    expected_lps = token_logprobs(ckpt.model, [ids])[0]

    settings = Settings(model=trained, device="cpu", dtype="float32")
    with TestClient(create_app(settings)) as client:
        info = client.get("/model").json()
        assert info["tokenizer"] == ckpt.meta["tokenizer"]

        r = client.post("/score", json={"text": text, "per_token": True})
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        assert result["tokens"] == expected_tokens  # the model's own tokenizer, not PTB's rules
        assert result["token_logprobs"] == pytest.approx(expected_lps.tolist(), abs=1e-5)
        assert result["num_oov"] == sum(w not in ckpt.vocab for w in words)

        prefix = " ".join(text.split()[:4])
        r = client.post("/next-word", json={"prefix": prefix, "top_k": 5})
        assert r.status_code == 200, r.text
        (nxt,) = r.json()["results"]
        dist = next_token_logprobs(ckpt.model, [ckpt.vocab.encode([EOS, *tokenizer.tokenize(prefix)])])[0]
        assert math.isclose(dist.exp().sum().item(), 1.0, abs_tol=1e-4)  # the full vocabulary, summing to 1
        top = torch.topk(dist, 5)
        assert [w["word"] for w in nxt["top_k"]] == ckpt.vocab.decode(top.indices.tolist())
        assert [w["logprob"] for w in nxt["top_k"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_results_table_is_read_from_each_runs_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.sample_corpus import main as results_table

    argv = ["--out", str(tmp_path), "--runs", "words-lowercase", "--config", "test", "--epochs", "1"]
    results_table([*argv, "--train-tokens", "3000"])
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "pydoc-words-lowercase" / "config.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"] == {"name": "words", "lowercase": True} and meta["training"]["max_epochs_run"] == 1
    row = out.strip().splitlines()[-1]
    assert row.startswith("| `words --lowercase` | " + f"{meta['vocab_size']:,} |")
    assert row.endswith(f"| 1 | {meta['metrics']['valid_ppl']:.2f} | {meta['metrics']['test_ppl']:.2f} |")
    assert f"(of 3,000 / {meta['metrics']['valid_predictions'] + 1:,} /" in row
