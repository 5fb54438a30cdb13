"""POST /score: exact against a by-hand forward pass, and the same numbers alone, in a batch, under concurrency."""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from service_helpers import reference_logprobs

SENTENCE = "The company said profits rose 5% to $30 million."
SENTENCE_TOKENS = ["the", "company", "said", "profits", "rose", "N", "N", "to", "$", "N", "million"]


def assert_consistent(result: dict) -> None:
    """The totals agree with the per-token numbers and with each other."""
    lps = result["token_logprobs"]
    assert result["num_tokens"] == len(result["tokens"]) == len(lps)
    assert all(lp < 0 for lp in lps)
    assert result["logprob"] == pytest.approx(sum(lps), abs=1e-6)
    assert result["log10prob"] == pytest.approx(result["logprob"] / math.log(10), abs=1e-9)
    assert result["perplexity"] == pytest.approx(math.exp(-result["logprob"] / result["num_tokens"]), rel=1e-9)
    assert result["num_oov"] == len(result["oov"])


def assert_matches_reference(ckpt, result: dict) -> None:
    expected = reference_logprobs(ckpt, result["tokens"])
    assert result["token_logprobs"] == pytest.approx(expected, abs=1e-5)
    assert result["logprob"] == pytest.approx(sum(expected), abs=1e-5 * len(expected))


def random_sentences(vocab_words: list[str], n: int, seed: int, max_len: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocab_words) for _ in range(rng.randint(1, max_len))) for _ in range(n)]


@pytest.fixture
def plain_words(service_vocab) -> list[str]:
    """Vocabulary words that the normaliser keeps as they are (lower-case, no specials)."""
    return [w for w in service_vocab.itos if w not in ("<unk>", "<eos>", "N", "$", "'", "'s", "n't")]


def score_one(client, text: str, **options) -> dict:
    r = client.post("/score", json={"text": text, "per_token": True, **options})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 1
    return body["results"][0]


def test_score_equals_a_plain_forward_pass(client, service_ckpt) -> None:
    r = client.post("/score", json={"text": SENTENCE, "per_token": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == service_ckpt.path.name
    (result,) = body["results"]
    assert result["text"] == SENTENCE
    assert result["tokens"] == [*SENTENCE_TOKENS, "<eos>"]
    assert result["oov"] == [] and result["num_oov"] == 0
    assert result["num_tokens"] == len(SENTENCE_TOKENS) + 1
    expected = reference_logprobs(service_ckpt, result["tokens"])
    assert result["token_logprobs"] == pytest.approx(expected, abs=1e-5)
    assert_consistent(result)
    # The model is far from uniform: a wrong position or token would show.
    assert max(expected) - min(expected) > 0.5


def test_per_token_is_off_by_default(client) -> None:
    r = client.post("/score", json={"text": SENTENCE})
    assert r.status_code == 200
    (result,) = r.json()["results"]
    assert result["token_logprobs"] is None
    with_lps = score_one(client, SENTENCE)
    assert result["logprob"] == pytest.approx(with_lps["logprob"], abs=1e-9)


def test_add_eos_false_does_not_predict_the_end(client, service_ckpt) -> None:
    with_eos = score_one(client, SENTENCE)
    without = score_one(client, SENTENCE, add_eos=False)
    assert without["tokens"] == SENTENCE_TOKENS
    assert without["tokens"][-1] != "<eos>"
    assert without["num_tokens"] == len(SENTENCE_TOKENS)
    assert_consistent(without)
    assert_matches_reference(service_ckpt, without)
    # Same context, one prediction fewer.
    assert without["token_logprobs"] == pytest.approx(with_eos["token_logprobs"][:-1], abs=1e-6)


def test_oov_words_are_reported_and_scored_as_unk(client, service_ckpt) -> None:
    result = score_one(client, "The zebra said xylophones rose")
    assert result["oov"] == ["zebra", "xylophones"]
    assert result["num_oov"] == 2
    assert result["tokens"] == ["the", "<unk>", "said", "<unk>", "rose", "<eos>"]
    assert_consistent(result)
    assert_matches_reference(service_ckpt, result)


def test_empty_text_with_add_eos_predicts_only_the_end(client, service_ckpt) -> None:
    result = score_one(client, "")
    assert result["tokens"] == ["<eos>"]
    assert result["num_tokens"] == 1
    assert_matches_reference(service_ckpt, result)


def test_normalize_false_splits_on_whitespace_only(client, service_ckpt) -> None:
    result = score_one(client, "The company  5%\tsaid\nrose", normalize=False)
    assert result["tokens"] == ["<unk>", "company", "<unk>", "said", "rose", "<eos>"]
    assert result["oov"] == ["The", "5%"]
    assert_matches_reference(service_ckpt, result)
    # PTB text goes through as it is.
    ptb = score_one(client, "the company said profits rose N N to $ N million", normalize=False)
    assert ptb["tokens"] == [*SENTENCE_TOKENS, "<eos>"]
    assert ptb["oov"] == []


def test_a_sentence_gets_the_same_numbers_alone_and_in_a_batch_of_64(client, service_ckpt, plain_words) -> None:
    alone = score_one(client, SENTENCE)
    others = random_sentences(plain_words, 62, seed=5)
    # Mixed lengths around it: shorter, longer, and both neighbours of the target in the sorted batch.
    batch = [*others[:17], SENTENCE, *others[17:], SENTENCE]
    assert len(batch) == 64
    assert len({len(s.split()) for s in batch}) > 20
    r = client.post("/score", json={"sentences": batch, "per_token": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["text"] for res in results] == batch  # input order
    for idx in (17, 63):
        got = results[idx]
        assert got["tokens"] == alone["tokens"]
        assert got["token_logprobs"] == pytest.approx(alone["token_logprobs"], abs=1e-5)
        assert got["logprob"] == pytest.approx(alone["logprob"], abs=1e-5)
        assert got["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-5)
    for res in results:
        assert_consistent(res)
        assert_matches_reference(service_ckpt, res)


def test_32_concurrent_clients_get_the_same_numbers(serve, service_ckpt, plain_words) -> None:
    texts = [SENTENCE, *random_sentences(plain_words, 31, seed=11)]
    with serve(max_wait_ms=20) as client:
        alone = [score_one(client, t) for t in texts]
        with ThreadPoolExecutor(max_workers=32) as pool:
            concurrent = list(pool.map(lambda t: score_one(client, t), texts))
    for a, c in zip(alone, concurrent, strict=True):
        assert c["tokens"] == a["tokens"]
        assert c["token_logprobs"] == pytest.approx(a["token_logprobs"], abs=1e-5)
        assert c["logprob"] == pytest.approx(a["logprob"], abs=1e-5)
        assert_matches_reference(service_ckpt, c)


def test_long_text_in_small_chunks_equals_one_pass(serve, service_ckpt, plain_words) -> None:
    rng = random.Random(8)
    long_text = " ".join(rng.choice(plain_words) for _ in range(60))
    mixed = [long_text, *random_sentences(plain_words, 7, seed=9, max_len=25)]
    with serve() as client:
        one_pass = client.post("/score", json={"sentences": mixed, "per_token": True}).json()["results"]
    with serve(max_chunk_tokens=4) as client:
        chunked = client.post("/score", json={"sentences": mixed, "per_token": True}).json()["results"]
    assert one_pass[0]["num_tokens"] == 61
    for a, b in zip(one_pass, chunked, strict=True):
        assert b["tokens"] == a["tokens"]
        assert b["token_logprobs"] == pytest.approx(a["token_logprobs"], abs=1e-5)
        assert_matches_reference(service_ckpt, b)


def test_token_ranks_agree_with_next_word_ranks(client) -> None:
    """per_token also gives each token's rank; /next-word ranks the same word after the same prefix equally."""
    r = client.post("/score", json={"text": "the stock market rose", "per_token": True})
    result = r.json()["results"][0]
    ranks = result["token_ranks"]
    assert len(ranks) == result["num_tokens"] and all(isinstance(k, int) and k >= 1 for k in ranks)
    tokens = result["tokens"]
    for i, token in enumerate(tokens):
        nw = client.post("/next-word", json={"prefix": " ".join(tokens[:i]), "top_k": 1, "candidates": [token]})
        candidate = nw.json()["results"][0]["candidates"][0]
        assert candidate["rank"] == ranks[i], (i, token)
        assert candidate["logprob"] == pytest.approx(result["token_logprobs"][i], abs=1e-5)
    assert client.post("/score", json={"text": "the stock"}).json()["results"][0]["token_ranks"] is None


NUMBERS = ("token_logprobs", "logprob", "log10prob", "perplexity")


def test_a_large_request_prepared_off_the_loop_gives_the_small_requests_numbers(client, plain_words) -> None:
    # A small request is prepared and answered on the event loop, a large one in a worker thread: the same
    # sentences get the same answer either way (numbers within float32 rounding: a batch of 24 is other matmuls).
    from service.adapters.native import INLINE_CHARS, small

    texts = random_sentences(plain_words, 24, seed=7, max_len=40)
    assert not small(texts, len(texts)) and sum(map(len, texts)) > INLINE_CHARS  # the worker-thread path
    r = client.post("/score", json={"sentences": texts, "per_token": True})
    assert r.status_code == 200
    for text, result in zip(texts, r.json()["results"], strict=True):
        assert small([text], 1)  # the event-loop path
        alone = score_one(client, text)
        rest = [k for k in result if k not in NUMBERS]
        assert [result[k] for k in rest] == [alone[k] for k in rest]
        assert result["token_logprobs"] == pytest.approx(alone["token_logprobs"], abs=1e-5)
        assert result["logprob"] == pytest.approx(alone["logprob"], abs=1e-4)
