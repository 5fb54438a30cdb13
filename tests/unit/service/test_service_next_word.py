"""POST /next-word: the top-k and the candidates' odds equal the softmax of a by-hand forward pass."""

from __future__ import annotations

import math

import pytest
import torch
from service_helpers import reference_next_logprobs


def next_word(client, **body) -> list[dict]:
    r = client.post("/next-word", json=body)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def assert_top_k_matches(ckpt, result: dict, k: int) -> torch.Tensor:
    logdist = reference_next_logprobs(ckpt, result["tokens"])
    top = result["top_k"]
    assert len(top) == k
    assert [e["rank"] for e in top] == list(range(1, k + 1))
    probs = [e["prob"] for e in top]
    assert probs == sorted(probs, reverse=True)
    expected_values, expected_ids = torch.topk(logdist, k)
    for entry, value in zip(top, expected_values.tolist(), strict=True):
        assert entry["prob"] == pytest.approx(math.exp(value), abs=1e-5)
        assert entry["logprob"] == pytest.approx(value, abs=1e-5)
        assert entry["prob"] == pytest.approx(math.exp(entry["logprob"]), rel=1e-9)
        assert entry["logprob"] == pytest.approx(logdist[ckpt.vocab.stoi[entry["word"]]].item(), abs=1e-5)
        assert entry["oov"] is False
    # The most probable word is the reference's (the tiny model has no near-ties at the top).
    assert top[0]["word"] == ckpt.vocab.itos[expected_ids[0]]
    return logdist


def test_top_k_is_the_softmax_of_the_last_position(client, service_ckpt) -> None:
    (result,) = next_word(client, prefix="The stock market", top_k=5)
    assert result["prefix"] == "The stock market"
    assert result["tokens"] == ["the", "stock", "market"]
    assert result["oov"] == []
    assert result["candidates"] is None
    assert_top_k_matches(service_ckpt, result, 5)


def test_the_full_distribution_sums_to_one(serve, service_ckpt) -> None:
    v = len(service_ckpt.vocab)
    with serve(max_top_k=v) as client:
        (result,) = next_word(client, prefix="mr. smith said the company", top_k=v)
    assert_top_k_matches(service_ckpt, result, v)
    assert {e["word"] for e in result["top_k"]} == set(service_ckpt.vocab.itos)
    assert sum(e["prob"] for e in result["top_k"]) == pytest.approx(1.0, abs=1e-4)


def test_empty_prefix_is_the_sentence_start(client, service_ckpt) -> None:
    (result,) = next_word(client, prefix="", top_k=4)
    assert result["tokens"] == []
    logdist = assert_top_k_matches(service_ckpt, result, 4)
    # The distribution after just <eos>.
    eos = service_ckpt.vocab.eos_id
    with torch.no_grad():
        logits, _ = service_ckpt.model(torch.tensor([[eos]]))
    torch.testing.assert_close(logdist, torch.log_softmax(logits[0, -1].double(), -1))


def test_candidates_get_their_prob_and_a_rank_consistent_with_the_top_k(client, service_ckpt) -> None:
    (full,) = next_word(client, prefix="the company", top_k=len(service_ckpt.vocab))
    by_word = {e["word"]: e for e in full["top_k"]}
    candidates = ["said", "Rose", "the", "<eos>", "zebra"]
    (result,) = next_word(client, prefix="the company", top_k=3, candidates=candidates)
    assert len(result["top_k"]) == 3
    assert result["top_k"] == full["top_k"][:3]
    cands = result["candidates"]
    assert [c["word"] for c in cands] == ["said", "rose", "the", "<eos>", "zebra"]
    logdist = reference_next_logprobs(service_ckpt, ["the", "company"])
    for c in cands[:4]:
        assert c["oov"] is False
        assert c["prob"] == pytest.approx(math.exp(logdist[service_ckpt.vocab.stoi[c["word"]]].item()), abs=1e-5)
        assert c["rank"] == by_word[c["word"]]["rank"]
        assert c["prob"] == pytest.approx(by_word[c["word"]]["prob"], abs=1e-9)
    zebra = cands[4]
    assert zebra["oov"] is True
    assert zebra["prob"] is None and zebra["logprob"] is None and zebra["rank"] is None


def test_candidates_go_through_the_normaliser_of_the_text(client, service_ckpt) -> None:
    """One token after normalisation: looked up as that token; none or several: not a single word, `oov`."""
    candidates = ["Mr.", "5", "$", "don't", "--", "5%"]
    (result,) = next_word(client, prefix="the", top_k=1, candidates=candidates)
    cands = result["candidates"]
    assert [c["word"] for c in cands] == ["mr.", "N", "$", "don't", "--", "5%"]
    assert [c["oov"] for c in cands] == [False, False, False, True, True, True]
    logdist = reference_next_logprobs(service_ckpt, ["the"])
    assert cands[1]["logprob"] == pytest.approx(logdist[service_ckpt.vocab.stoi["N"]].item(), abs=1e-5)
    assert all(c["prob"] is None and c["rank"] is None for c in cands[3:])
    (raw,) = next_word(client, prefix="the", top_k=1, candidates=["5", "N"], normalize=False)
    assert [(c["word"], c["oov"]) for c in raw["candidates"]] == [("5", True), ("N", False)]


def test_a_candidate_in_the_top_k_has_the_same_rank_there(client) -> None:
    (first,) = next_word(client, prefix="the", top_k=3)
    words = [e["word"] for e in first["top_k"]]
    (result,) = next_word(client, prefix="the", top_k=3, candidates=words[::-1])
    assert [c["rank"] for c in result["candidates"]] == [3, 2, 1]


def test_prefixes_give_one_result_each_in_order(client, service_ckpt) -> None:
    prefixes = ["", "the", "The stock market rose 5%", "mr. zebra said", "the company said profits rose to"]
    results = next_word(client, prefixes=prefixes, top_k=3)
    assert [r["prefix"] for r in results] == prefixes
    assert results[3]["oov"] == ["zebra"]
    assert results[3]["tokens"] == ["mr.", "<unk>", "said"]
    assert results[2]["tokens"] == ["the", "stock", "market", "rose", "N", "N"]
    for r in results:
        assert_top_k_matches(service_ckpt, r, 3)
    # Each equals the prefix asked alone.
    for prefix, r in zip(prefixes, results, strict=True):
        (alone,) = next_word(client, prefix=prefix, top_k=3)
        assert [e["word"] for e in alone["top_k"]] == [e["word"] for e in r["top_k"]]
        assert [e["prob"] for e in alone["top_k"]] == pytest.approx([e["prob"] for e in r["top_k"]], abs=1e-6)


def test_next_word_without_normalisation(client, service_ckpt) -> None:
    (result,) = next_word(client, prefix="The stock", top_k=2, normalize=False)
    assert result["tokens"] == ["<unk>", "stock"]
    assert result["oov"] == ["The"]
    assert_top_k_matches(service_ckpt, result, 2)
