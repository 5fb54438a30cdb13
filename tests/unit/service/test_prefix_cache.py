"""The prefix-state cache: type-ahead reuses the state of the longest cached prefix, and answers as before."""

from __future__ import annotations

import pytest
import torch
from service_helpers import get_metrics, metric, reference_next_logprobs

import service.prefix_cache as prefix_cache
from service.prefix_cache import PrefixStateCache


def state(value: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((2, 3), value), torch.full((2, 3), -value)


def test_the_longest_cached_prefix_is_found() -> None:
    cache = PrefixStateCache(8)
    cache.put([1, 2], state(2.0))
    cache.put([1, 2, 3, 4], state(4.0))
    n, st = cache.longest([1, 2, 3, 4, 5])
    assert n == 4 and torch.equal(st[0], state(4.0)[0]) and torch.equal(st[1], state(4.0)[1])
    n, st = cache.longest([1, 2, 3])
    assert n == 2 and torch.equal(st[0], state(2.0)[0])
    assert cache.longest([1, 2])[0] == 2  # the whole sequence is a prefix of itself
    assert cache.longest([2, 1, 2]) == (0, None)  # a prefix, not any substring
    assert cache.longest([]) == (0, None)


def test_the_cache_holds_at_most_max_entries_and_drops_the_least_recently_used() -> None:
    cache = PrefixStateCache(2)
    cache.put([1], state(1.0))
    cache.put([2], state(2.0))
    assert cache.longest([1, 9])[0] == 1  # [1] is now the most recently used
    cache.put([3], state(3.0))
    assert len(cache) == 2
    assert cache.longest([2])[0] == 0  # evicted
    assert cache.longest([1])[0] == 1 and cache.longest([3])[0] == 1


def test_a_stored_state_is_a_copy_not_a_view_of_the_batch() -> None:
    cache = PrefixStateCache(4)
    h, c = torch.zeros(2, 5, 3), torch.zeros(2, 5, 3)
    cache.put([7], (h[:, 1], c[:, 1]))
    h.fill_(9.0)
    stored = cache.longest([7])[1]
    assert stored[0].abs().sum() == 0 and stored[0].shape == (2, 3)


def test_a_hash_collision_is_a_miss_not_a_wrong_state(monkeypatch) -> None:
    monkeypatch.setattr(prefix_cache, "prefix_hashes", lambda ids: [0] * len(ids))  # every prefix collides
    cache = PrefixStateCache(4)
    cache.put([1, 2], state(1.0))
    assert cache.longest([3, 4]) == (0, None)
    assert cache.longest([1, 2, 5])[0] == 2


def test_zero_entries_keeps_nothing() -> None:
    cache = PrefixStateCache(0)
    cache.put([1, 2], state(1.0))
    assert len(cache) == 0 and cache.longest([1, 2]) == (0, None)
    with pytest.raises(ValueError):
        PrefixStateCache(-1)


TYPE_AHEAD = ["the", "the stock", "the stock market", "the stock market rose", "the stock market rose to"]


@pytest.mark.parametrize("entries", [4096, 0])
def test_type_ahead_answers_equal_a_full_forward_pass(serve, service_ckpt, entries) -> None:
    with serve(prefix_cache_entries=entries) as client:
        for prefix in [*TYPE_AHEAD, "the stock", "the company said"]:
            r = client.post("/next-word", json={"prefix": prefix, "top_k": 5})
            assert r.status_code == 200, r.text
            (result,) = r.json()["results"]
            expected = reference_next_logprobs(service_ckpt, result["tokens"])
            for entry in result["top_k"]:
                idx = service_ckpt.vocab.stoi[entry["word"]]
                assert entry["logprob"] == pytest.approx(expected[idx].item(), abs=1e-5)
            assert result["top_k"][0]["word"] == service_ckpt.vocab.itos[int(expected.argmax())]
        m = get_metrics(client)
    hits = metric(m, "lmserve_prefix_cache_lookups_total", result="hit")
    misses = metric(m, "lmserve_prefix_cache_lookups_total", result="miss")
    if entries:
        # "the" misses; each longer prefix finds the one before it; "the stock" again is an exact hit; "the
        # company said" finds "<eos> the".
        assert (hits, misses) == (6, 1)
        # tokens reused, <eos> included: 2 + 3 + 4 + 5 (type-ahead) + 3 (repeat) + 2 ("<eos> the")
        assert metric(m, "lmserve_prefix_cache_tokens_reused_total") == 19
        assert metric(m, "lmserve_prefix_cache_entries") == 6
    else:
        assert hits == misses == 0


def test_a_batch_of_prefixes_mixes_hits_and_misses(serve, service_ckpt) -> None:
    with serve(prefix_cache_entries=3) as client:
        client.post("/next-word", json={"prefix": "the stock"})
        prefixes = ["the stock market", "profits fell", "the stock", "", "mr. smith said the company"]
        r = client.post("/next-word", json={"prefixes": prefixes, "top_k": 3})
        assert r.status_code == 200, r.text
        for result in r.json()["results"]:
            expected = reference_next_logprobs(service_ckpt, result["tokens"])
            got = {e["word"]: e["logprob"] for e in result["top_k"]}
            for word, lp in got.items():
                assert lp == pytest.approx(expected[service_ckpt.vocab.stoi[word]].item(), abs=1e-5)
        m = get_metrics(client)
    assert metric(m, "lmserve_prefix_cache_entries") == 3  # bounded
