"""Evaluation: stream perplexity of a split, and per-sentence scoring of a text file."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from lm.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lm.model import LSTMLanguageModel, ModelConfig
from lm.scoring import stream_nll
from lm.vocab import Vocabulary
from trainer.errors import TrainerError
from trainer.evaluate import evaluate_split, score_file, score_lines


def uniform(model: LSTMLanguageModel) -> LSTMLanguageModel:
    """Zero decoder: every logit equal, every token has probability 1/V whatever the LSTM does."""
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    return model


def test_uniform_model_perplexity_is_the_vocabulary_size(tmp_path: Path, tiny_vocab: Vocabulary, make_model) -> None:
    lines = ["the cat sat on a mat", "a dog ran", "N N .", "the"]
    (tmp_path / "ptb.valid.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = save_checkpoint(tmp_path / "ckpt", uniform(make_model(vocab_size=len(tiny_vocab))), tiny_vocab)
    result = evaluate_split(load_checkpoint(path), tmp_path, "valid")
    tokens = sum(len(line.split()) + 1 for line in lines)  # every line ends with <eos>
    assert result.split == "valid"
    assert result.predictions == tokens - 1
    assert abs(result.perplexity - len(tiny_vocab)) < 1e-4
    assert math.isclose(result.nll_nats, (tokens - 1) * math.log(len(tiny_vocab)), rel_tol=1e-6)


def test_uniform_model_over_the_real_ptb_test_split(ptb_dir: Path, ptb_vocab: Vocabulary) -> None:
    """docs/trainer.md: the test split is one stream of 82,430 tokens, every token after the first predicted once."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(ModelConfig(len(ptb_vocab), 2, 2, 1))
    model.init_weights(0.1)
    ckpt = Checkpoint(path=ptb_dir, model=uniform(model).eval(), vocab=ptb_vocab, config=model.config)
    result = evaluate_split(ckpt, ptb_dir, "test")
    assert result.predictions == 82_429
    assert math.isclose(result.perplexity, 10_000, rel_tol=1e-5)  # exp(mean nll) == V


def test_stream_nll_of_a_trained_looking_model_differs_from_uniform(make_model) -> None:
    model = make_model()
    ids = torch.randint(0, 12, (60,), generator=torch.Generator().manual_seed(1))
    nll, n = stream_nll(model, ids)
    assert n == 59
    assert abs(math.exp(nll / n) - 12) > 0.01  # the uniform check above is not vacuous


def test_evaluate_split_refuses_a_file_with_words_outside_the_vocabulary(tiny_checkpoint, tmp_path: Path) -> None:
    (tmp_path / "ptb.test.txt").write_text("the zebra sat\n", encoding="utf-8")
    with pytest.raises(TrainerError, match=r"not in the vocabulary.*'zebra'"):
        evaluate_split(load_checkpoint(tiny_checkpoint.path), tmp_path, "test")


def sentence_reference(model: LSTMLanguageModel, ids: list[int]) -> float:
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    lp = torch.log_softmax(logits[0].double(), dim=-1)
    return sum(lp[t, ids[t + 1]].item() for t in range(len(ids) - 1))


def test_score_lines_primes_with_eos_and_predicts_the_final_eos(tiny_checkpoint) -> None:
    ckpt = load_checkpoint(tiny_checkpoint.path)
    vocab = ckpt.vocab
    lines = ["the cat sat\n", "\n", "a zebra ran on the mat\n", "   \n", "dog\n"]
    scores = list(score_lines(ckpt, lines, batch_size=2))
    assert [s.text for s in scores] == ["the cat sat", "a zebra ran on the mat", "dog"]
    assert [s.num_tokens for s in scores] == [4, 7, 2]
    assert scores[1].oov == ["zebra"]
    assert scores[1].tokens == ["a", "<unk>", "ran", "on", "the", "mat", "<eos>"]
    for s in scores:
        ids = [vocab.eos_id, *vocab.encode(s.tokens)]
        assert math.isclose(s.logprob, sentence_reference(ckpt.model, ids), rel_tol=1e-5)
        assert math.isclose(s.log10prob, s.logprob / math.log(10), rel_tol=1e-12)
        assert math.isclose(s.perplexity, math.exp(-s.logprob / s.num_tokens), rel_tol=1e-12)


def test_score_file_jsonl_totals(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint.path)
    text = tmp_path / "s.txt"
    text.write_text("the cat sat\n\nthe zebra ran\na mat\n", encoding="utf-8")
    out = io.StringIO()
    summary = score_file(ckpt, text, per_sentence=True, fmt="jsonl", out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(rows) == 4
    assert rows[-1] == {"summary": summary}
    assert summary["sentences"] == 3
    assert summary["words"] == 8
    assert summary["oov"] == 1
    assert summary["num_tokens"] == 11
    assert math.isclose(summary["logprob"], sum(r["logprob"] for r in rows[:-1]), rel_tol=1e-12)


def test_score_file_without_per_sentence_prints_only_the_summary(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint.path)
    text = tmp_path / "s.txt"
    text.write_text("the cat\nsat\n", encoding="utf-8")
    out = io.StringIO()
    summary = score_file(ckpt, text, per_sentence=False, out=out)
    printed = out.getvalue().splitlines()
    assert len(printed) == 2
    assert "2 sentences" in printed[0]
    assert f"ppl {summary['perplexity']:.3f}" in printed[1]


def test_score_file_refuses_an_empty_or_missing_file(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint.path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(TrainerError, match="no sentences"):
        score_file(ckpt, empty, per_sentence=True, out=io.StringIO())
    with pytest.raises(TrainerError, match="cannot read"):
        score_file(ckpt, tmp_path / "missing.txt", per_sentence=True, out=io.StringIO())


def test_score_file_writes_to_the_current_stdout(tiny_checkpoint, tmp_path: Path) -> None:
    """Without `out`, the output goes to sys.stdout as it is at call time (redirection is honoured)."""
    ckpt = load_checkpoint(tiny_checkpoint.path)
    text = tmp_path / "s.txt"
    text.write_text("the cat\n", encoding="utf-8")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary = score_file(ckpt, text, per_sentence=True, fmt="jsonl")
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert rows[-1] == {"summary": summary}
    assert rows[0]["text"] == "the cat"
