"""The fast lane (service.lane) answers exactly as FastAPI does: the same requests, well-formed and not, sent to
the app with the lane and to the app without it get the same status, headers and body, and count the same in
the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import parse_metrics

from service.app import FAST_LANE, create_app
from service.lane import FastLane, is_json

KEY = "s3cret-key"
JSON = {"content-type": "application/json"}
AUTH = {"authorization": f"Bearer {KEY}"}
VOLATILE_HEADERS = {"x-request-id", "date"}
FIELDS = {
    "/score": ["text", "sentences", "per_token", "normalize", "add_eos", "log10"],
    "/next-word": ["prefix", "prefixes", "top_k", "candidates", "normalize"],
    "/v1/completions": ["model", "prompt", "max_tokens", "echo", "logprobs", "temperature", "top_p", "seed", "n"],
}


@pytest.fixture(scope="module")
def pair(service_ckpt) -> Iterator[tuple[TestClient, TestClient]]:
    """The app with the lane and without it, the same settings (an API key, small limits to reach)."""
    from service.settings import Settings

    with ExitStack() as stack:
        clients = []
        for lane in (True, False):
            s = Settings(
                model=service_ckpt.path, device="cpu", dtype="float32", api_key=KEY, max_body_bytes=4096,
                max_sentences=4, max_top_k=20, max_request_tokens=400,
            )  # fmt: skip
            app = create_app(s, fast_lane=lane)
            clients.append(stack.enter_context(TestClient(app, raise_server_exceptions=False)))
        assert any(isinstance(m.cls, type) and m.cls is FastLane for m in clients[0].app.user_middleware)
        assert not any(m.cls is FastLane for m in clients[1].app.user_middleware)
        yield clients[0], clients[1]


def comparable(response) -> tuple[int, dict, object]:
    """Status, the headers that do not change from one request to the next, and the body (JSON when it is;
    a completion's id and creation time blanked)."""
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
    try:
        body = response.json()
    except ValueError:
        return response.status_code, headers, response.content
    if isinstance(body, dict) and body.get("object") == "text_completion":
        body = {**body, "id": None, "created": None}
        headers.pop("content-length", None)  # the id's length may differ
    return response.status_code, headers, body


def both(pair, path: str, content: bytes, headers: dict) -> tuple[tuple, tuple]:
    lane, plain = pair
    return (
        comparable(lane.post(path, content=content, headers=headers)),
        comparable(plain.post(path, content=content, headers=headers)),
    )


CASES = [
    ("/score", {"text": "the stock market rose"}),
    ("/score", {"sentences": ["the stock rose", "", "a b c"], "per_token": True}),
    ("/score", {"text": "the market", "log10": True, "add_eos": False}),
    ("/score", {"text": ""}),
    ("/score", {"text": "", "add_eos": False}),
    ("/score", {"sentences": []}),
    ("/score", {"sentences": ["a"] * 5}),
    ("/score", {"text": "a", "sentences": ["b"]}),
    ("/score", {"txt": "the market"}),
    ("/score", {"sentences": "the market"}),
    ("/score", {"text": ["the market"]}),
    ("/score", {"text": 5}),
    ("/score", {"text": "x " * 500}),
    ("/score", {"text": "\ud800"}),
    ("/score", {}),
    ("/score", []),
    ("/score", "the market"),
    ("/score", None),
    ("/score", 1.5),
    ("/next-word", {"prefix": "the stock"}),
    ("/next-word", {"prefixes": ["", "the"], "top_k": 3, "candidates": ["market", "zzz", "The"]}),
    ("/next-word", {"prefix": "the", "top_k": 50}),
    ("/next-word", {"prefix": "the", "top_k": 0}),
    ("/next-word", {"prefix": "the", "candidates": []}),
    ("/next-word", {"prefixes": "the"}),
    ("/next-word", {"prefix": "the", "top_k": "3"}),
    ("/next-word", {"prefix": "the", "top_k": True}),
    ("/v1/completions", {"model": "tiny-lm", "prompt": "the stock", "max_tokens": 0, "echo": True, "logprobs": 2}),
    ("/v1/completions", {"prompt": "the stock", "max_tokens": 3, "temperature": 0}),
    ("/v1/completions", {"prompt": ["the", "a"], "max_tokens": 2, "temperature": 1.0, "seed": 7}),
    ("/v1/completions", {"prompt": [9, 10, 11], "max_tokens": 1, "temperature": 0}),
    ("/v1/completions", {"model": "gpt-4", "prompt": "the"}),
    ("/v1/completions", {"prompt": "the", "max_tokens": -1}),
    ("/v1/completions", {"prompt": "the", "logprobs": 99}),
    ("/v1/completions", {}),
]


@pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{p} {json.dumps(b)[:40]}" for p, b in CASES])
def test_a_json_body_gets_the_same_answer_through_the_lane(pair, path, body) -> None:
    lane, plain = both(pair, path, json.dumps(body).encode(), {**JSON, **AUTH})
    assert lane == plain


RAW = [
    b"",
    b"{",
    b'{"text": "the market",}',
    b'{"text": "the market"} trailing',
    b"\xff\xfe\x00garbage",
    b'{"text": "caf\xe9"}',
    b'{"text": NaN}',
    b'{"text": "a", "text": 5}',
    b"[" * 50_000 + b"]" * 50_000,
    b'{"top_k": 1e400, "prefix": "the"}',
    b'{"prefix": "the", "top_k": 3.0}',
    b'{"prefix": "the", "top_k": 3.5}',
    b'"\\ud800"',
    b"x" * 5000,
]


@pytest.mark.parametrize("path", FAST_LANE)
@pytest.mark.parametrize("content", RAW, ids=[repr(c[:24]) for c in RAW])
def test_a_malformed_body_gets_the_same_answer_through_the_lane(pair, path, content) -> None:
    lane, plain = both(pair, path, content, {**JSON, **AUTH})
    assert lane == plain
    assert lane[0] < 500


HEADERS = [
    {},  # no content type: FastAPI's
    {"content-type": "text/plain"},
    {"content-type": "application/json; charset=utf-8"},
    {"content-type": "APPLICATION/JSON"},
    {"content-type": "application/vnd.lm+json"},
    {"content-type": "application/json-patch"},
    {"content-type": "application/x-www-form-urlencoded"},
    {"content-type": ";;;"},
    {"content-type": "application/json", "authorization": "Bearer wrong"},
    {"content-type": "application/json", "authorization": KEY},
    {"content-type": "application/json", "authorization": ""},
    {"content-type": "application/json", "content-length": "999999"},
]


@pytest.mark.parametrize("path", FAST_LANE)
@pytest.mark.parametrize("headers", HEADERS, ids=[json.dumps(h)[:50] for h in HEADERS])
def test_any_content_type_and_key_gets_the_same_answer_through_the_lane(pair, path, headers) -> None:
    body = json.dumps({"text": "the market", "prefix": "the", "prompt": "the", "max_tokens": 0}).encode()
    if "content-length" in headers:
        body = b'{"text": "' + b"a " * 3000 + b'"}'
        headers = {**headers, "content-length": str(len(body))}
    key = {} if "authorization" in headers else AUTH
    lane, plain = both(pair, path, body, {**headers, **key})
    assert lane == plain


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(
    path=st.sampled_from(FAST_LANE),
    data=st.data(),
)
def test_generated_bodies_get_the_same_answer_through_the_lane(pair, path, data) -> None:
    values = st.recursive(
        st.none() | st.booleans() | st.integers(-3, 30) | st.floats(allow_nan=False) | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
        max_leaves=6,
    )
    keys = st.sampled_from(FIELDS[path] + ["extra"])
    body = data.draw(st.dictionaries(keys, values, max_size=4) | values)
    lane, plain = both(pair, path, json.dumps(body).encode(), {**JSON, **AUTH})
    assert lane == plain


def test_both_paths_count_the_same_requests_and_refusals(pair) -> None:
    """The observer and the error handlers count a request in the lane exactly as one through FastAPI."""
    before = [counters(c) for c in pair]
    for path, body in CASES[:12]:
        both(pair, path, json.dumps(body).encode(), {**JSON, **AUTH})
    both(pair, "/score", b"{", JSON)  # no key: 401 before the body
    after = [counters(c) for c in pair]
    deltas = [
        {k: v - b.get(k, 0) for k, v in a.items() if v != b.get(k, 0)} for a, b in zip(after, before, strict=True)
    ]
    assert deltas[0] == deltas[1]
    labels = [dict(lab) for _, lab in deltas[0]]
    assert any(lab.get("reason") == "unauthorized" for lab in labels) and any(
        lab.get("code") == "422" for lab in labels
    )


def counters(client: TestClient) -> dict[tuple, float]:
    """The requests and refusals counted so far, by their labels."""
    samples = parse_metrics(client.get("/metrics", headers=AUTH).text)
    return {k: v for k, v in samples.items() if k[0] in ("lmserve_requests_total", "lmserve_requests_rejected_total")}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"application/json", True),
        (b"application/json; charset=utf-8", True),
        (b"Application/JSON", True),
        (b"application/problem+json", True),
        (b"text/json", False),
        (b"application/jsonx", False),
        (b"application/json foo", False),
        (b"", False),
    ],
)
def test_the_lane_takes_only_a_plainly_json_content_type(value, expected) -> None:
    assert is_json({"headers": [(b"content-type", value), (b"content-type", b"text/plain")]}) is expected
    assert is_json({"headers": [(b"content-type", b"text/plain"), (b"content-type", value)]}) is False
