"""Every limit at its boundary, and every kind of bad input: a 4xx with the JSON envelope, never a 5xx."""

from __future__ import annotations

import json

import pytest
from service_helpers import assert_envelope, get_metrics, metric

LIMITS = {
    "max_sentences": 3,
    "max_chars": 40,
    "max_tokens": 5,
    "max_top_k": 4,
    "max_candidates": 2,
    "max_body_bytes": 300,
}


@pytest.fixture
def limited(serve):
    with serve(**LIMITS) as client:
        yield client


def assert_limit(response, limit: str, status: int = 422) -> None:
    error = assert_envelope(response, status, "limit_exceeded")
    assert error["details"]["limit"] == limit
    assert error["details"]["max"] == LIMITS[limit]
    assert error["details"]["value"] > LIMITS[limit]


def test_max_sentences(limited) -> None:
    assert limited.post("/score", json={"sentences": ["the"] * 3}).status_code == 200
    assert_limit(limited.post("/score", json={"sentences": ["the"] * 4}), "max_sentences")
    assert limited.post("/next-word", json={"prefixes": ["the"] * 3}).status_code == 200
    assert_limit(limited.post("/next-word", json={"prefixes": ["the"] * 4}), "max_sentences")


def test_max_chars(limited) -> None:
    ok = "a" * LIMITS["max_chars"]
    assert limited.post("/score", json={"text": ok}).status_code == 200
    assert_limit(limited.post("/score", json={"text": ok + "a"}), "max_chars")
    assert_limit(limited.post("/score", json={"sentences": ["the", ok + "a"]}), "max_chars")
    assert limited.post("/next-word", json={"prefix": ok}).status_code == 200
    assert_limit(limited.post("/next-word", json={"prefix": ok + "a"}), "max_chars")


def test_max_tokens_counts_tokens_after_normalisation(limited) -> None:
    six = "the stock market rose 5%"  # -> the stock market rose N N
    r = limited.post("/score", json={"text": "the stock market rose 5"})
    assert r.status_code == 200
    assert r.json()["results"][0]["tokens"] == ["the", "stock", "market", "rose", "N", "<eos>"]
    assert_limit(limited.post("/score", json={"text": six}), "max_tokens")
    assert limited.post("/score", json={"text": "a b c d e", "normalize": False}).status_code == 200
    assert_limit(limited.post("/score", json={"text": "a b c d e f", "normalize": False}), "max_tokens")
    assert limited.post("/next-word", json={"prefix": "a b c d e"}).status_code == 200
    assert_limit(limited.post("/next-word", json={"prefix": "a b c d e f"}), "max_tokens")


def test_max_top_k(limited) -> None:
    r = limited.post("/next-word", json={"prefix": "the", "top_k": 4})
    assert r.status_code == 200
    assert len(r.json()["results"][0]["top_k"]) == 4
    assert_limit(limited.post("/next-word", json={"prefix": "the", "top_k": 5}), "max_top_k")
    # The default top_k (10) is not the client's choice: under a smaller max_top_k it serves max_top_k words.
    r = limited.post("/next-word", json={"prefix": "the"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"][0]["top_k"]) == 4


def test_max_candidates(limited) -> None:
    assert limited.post("/next-word", json={"prefix": "the", "candidates": ["a", "b"]}).status_code == 200
    assert_limit(limited.post("/next-word", json={"prefix": "the", "candidates": ["a", "b", "c"]}), "max_candidates")


def body_of_size(size: int) -> bytes:
    """A valid /score body of exactly `size` bytes."""
    base = json.dumps({"text": ""}).encode()
    body = json.dumps({"text": "a" * (size - len(base))}).encode()
    assert len(body) == size
    return body


def test_max_body_bytes(serve) -> None:
    # max_chars above the body size, so that only the body limit can refuse.
    with serve(max_body_bytes=300, max_chars=1000) as client:
        headers = {"content-type": "application/json"}
        assert client.post("/score", content=body_of_size(300), headers=headers).status_code == 200
        r = client.post("/score", content=body_of_size(301), headers=headers)
        error = assert_envelope(r, 413, "limit_exceeded")
        assert error["details"]["limit"] == "max_body_bytes"
        assert error["details"]["max"] == 300
        # A streamed body with no Content-Length is counted as it arrives.
        chunks = iter([body_of_size(301)[:200], body_of_size(301)[200:]])
        r = client.post("/score", content=chunks, headers=headers)
        error = assert_envelope(r, 413, "limit_exceeded")
        assert error["details"]["limit"] == "max_body_bytes"
        samples = get_metrics(client)
        assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="too_long") == 2


BAD_SCORE_BODIES = {
    "text is a number": {"text": 5},
    "sentences not a list": {"sentences": "the stock"},
    "a sentence is a number": {"sentences": ["the", 5]},
    "normalize as a string": {"text": "the", "normalize": "true"},
    "add_eos as a number": {"text": "the", "add_eos": 1},
    "unknown field": {"text": "the", "temperature": 0.5},
    "both text and sentences": {"text": "the", "sentences": ["the"]},
    "neither text nor sentences": {"per_token": True},
    "empty object": {},
    "null text": {"text": None},
    "empty sentences": {"sentences": []},
    "empty sentence without eos": {"text": "", "add_eos": False},
    "punctuation only without eos": {"text": " -- ... , ", "add_eos": False},
    "a NUL character": {"text": "the\x00stock"},
}


@pytest.mark.parametrize("body", BAD_SCORE_BODIES.values(), ids=BAD_SCORE_BODIES.keys())
def test_bad_score_requests_get_422_with_the_envelope(client, body) -> None:
    assert_envelope(client.post("/score", json=body), 422)


BAD_NEXT_WORD_BODIES = {
    "top_k zero": {"prefix": "the", "top_k": 0},
    "top_k negative": {"prefix": "the", "top_k": -1},
    "top_k as a string": {"prefix": "the", "top_k": "5"},
    "top_k as a float": {"prefix": "the", "top_k": 2.0},
    "top_k as a bool": {"prefix": "the", "top_k": True},
    "prefix is a number": {"prefix": 5},
    "candidates not a list": {"prefix": "the", "candidates": "the"},
    "unknown field": {"prefix": "the", "k": 3},
    "both prefix and prefixes": {"prefix": "the", "prefixes": ["the"]},
    "neither prefix nor prefixes": {"top_k": 3},
    "empty prefixes": {"prefixes": []},
}


@pytest.mark.parametrize("body", BAD_NEXT_WORD_BODIES.values(), ids=BAD_NEXT_WORD_BODIES.keys())
def test_bad_next_word_requests_get_422_with_the_envelope(client, body) -> None:
    assert_envelope(client.post("/next-word", json=body), 422)


def test_a_validation_error_names_the_field(client) -> None:
    error = assert_envelope(client.post("/next-word", json={"prefix": "the", "top_k": "5"}), 422, "invalid_request")
    assert "top_k" in error["message"]
    assert any(d["loc"][-1] == "top_k" for d in error["details"])
    error = assert_envelope(client.post("/score", json={"text": "the", "temperature": 1}), 422, "invalid_request")
    assert "temperature" in error["message"]


@pytest.mark.parametrize(
    "content",
    [b'{"text": "the stock"', b"not json at all", b'{"text": "a",}', b"", b"[1, 2]", b'"the stock market"', b"null"],
    ids=["truncated", "not json", "trailing comma", "empty body", "a list", "a string", "null"],
)
def test_malformed_bodies_get_422_with_the_envelope(client, content: bytes) -> None:
    for path in ("/score", "/next-word"):
        r = client.post(path, content=content, headers={"content-type": "application/json"})
        assert_envelope(r, 422)


def test_invalid_json_says_so(client) -> None:
    r = client.post("/score", content=b'{"text": "the"', headers={"content-type": "application/json"})
    assert_envelope(r, 422, "invalid_json")


def test_empty_string_with_add_eos_scores_one_prediction(client) -> None:
    r = client.post("/score", json={"text": "", "add_eos": True})
    assert r.status_code == 200
    (result,) = r.json()["results"]
    assert result["tokens"] == ["<eos>"] and result["num_tokens"] == 1


def test_unknown_route_and_wrong_method_use_the_envelope(client) -> None:
    assert_envelope(client.get("/nope"), 404, "not_found")
    assert_envelope(client.post("/healthz", json={}), 405, "method_not_allowed")
    r = client.get("/score")
    assert_envelope(r, 405, "method_not_allowed")
    assert "POST" in r.headers.get("allow", "")


def test_rejections_are_counted_by_reason(limited) -> None:
    limited.post("/score", json={"text": 5})
    limited.post("/score", json={"sentences": ["the"] * 4})
    limited.post("/next-word", json={"prefix": "the", "top_k": 5})
    samples = get_metrics(limited)
    assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="bad_request") == 1
    assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="too_long") == 1
    assert metric(samples, "lmserve_requests_rejected_total", endpoint="/next-word", reason="too_long") == 1
    assert metric(samples, "lmserve_requests_total", endpoint="/score", code="422") == 2
