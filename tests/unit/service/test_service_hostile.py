"""Hostile and careless input: every request gets a 2xx or a 4xx with a message saying what to do, never a 500.

The known cases first (each was a 500 or a hang once), then hypothesis looking for more over the request
models' fields, with lone surrogates, pathological punctuation and wrong types.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import assert_envelope, metric, metric_or_zero, metric_sum, parse_metrics, run_async

from service.engine import EngineTimeoutError
from service.http import Deadline
from service.schemas import lone_surrogate

JSON = {"content-type": "application/json"}


def post_raw(client, path: str, body: str, headers: dict | None = None):
    """The body as written (ASCII JSON escapes, so that a lone surrogate travels as `\\ud800`)."""
    return client.post(path, content=body.encode(), headers=JSON if headers is None else headers)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/score", {"text": "1" + "%" * 2000}),
        ("/score", {"sentences": ["1" + "%" * 2000, "x" + "'s" * 3000]}),
        ("/next-word", {"prefix": "do" + "n't" * 2000}),
        ("/score", {"text": "(" * 3200 + ")" * 3200}),
        ("/next-word", {"prefix": "'" * 19_000, "candidates": ["%" * 1000, "$" * 500]}),
    ],
)
def test_pathological_words_are_answered(client, path: str, body: dict) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/score", '{"text": "a\\ud800"}', "text"),
        ("/score", '{"sentences": ["ok", "\\ud800"]}', "sentences"),
        ("/next-word", '{"prefix": "the", "candidates": ["\\udfff"]}', "candidates"),
        ("/next-word", '{"prefixes": ["\\ud800 the"]}', "prefixes"),
        ("/v1/completions", '{"prompt": "\\ud800", "echo": true, "logprobs": 1, "max_tokens": 0}', "prompt"),
        ("/v1/completions", '{"prompt": ["ok", "a\\udc00"], "max_tokens": 1}', "prompt"),
        ("/v1/completions", '{"prompt": "the", "max_tokens": 2, "stop": ["\\ud800"]}', "stop"),
        ("/v1/completions", '{"prompt": "the", "max_tokens": 0, "user": "\\udbff"}', "user"),
        ("/tokenize", '{"prompt": "the \\ud800"}', "prompt"),
    ],
)
def test_a_lone_surrogate_is_refused_wherever_it_is(client, path: str, body: str, where: str) -> None:
    error = assert_envelope(post_raw(client, path, body), 422, "invalid_request")
    assert error["message"].startswith(f"{where}: ") and "surrogate" in error["message"]


def test_lone_surrogates_are_found_in_nested_values_and_keys() -> None:
    assert lone_surrogate({"a": ["ok", {"b": [1, "x\ud800"]}]}) == (("a", 1, "b", 1), 1, "\ud800")
    assert lone_surrogate({"\udc00": 1}) == (("\udc00",), 0, "\udc00")
    assert lone_surrogate(["ok", "\U0001f600", 3, None]) is None
    deep: list = ["\ud800"]
    for _ in range(100_000):  # deeper than any recursion limit
        deep = [deep]
    assert lone_surrogate(deep) == ((0,) * 100_000 + (0,), 0, "\ud800")


def test_a_surrogate_pair_is_text(client) -> None:
    """The escaped pair of an emoji is valid: scored, as <unk>."""
    r = post_raw(client, "/score", '{"text": "the \\ud83d\\ude00"}')
    assert r.status_code == 200 and r.json()["results"][0]["oov"] == ["\U0001f600"]


@pytest.mark.parametrize(
    ("path", "body", "hint"),
    [
        ("/score", {"sentence": ["the"]}, "did you mean `sentences`?"),
        ("/score", {"text": "the", "per_tokens": True}, "did you mean `per_token`?"),
        ("/score", {"prefix": "the"}, "the fields are `text`, `sentences`"),
        ("/score", {"text": ["the", "a"]}, "a list of strings goes in `sentences`"),
        ("/score", {"sentences": "the"}, "one string goes in `text`"),
        ("/next-word", {"prefix": ["the"]}, "a list of strings goes in `prefixes`"),
        ("/next-word", {"prefixes": "the"}, "one string goes in `prefix`"),
        ("/score", [{"text": "the"}], "the body must be a JSON object"),
    ],
)
def test_a_422_says_what_to_do(client, path: str, body: object, hint: str) -> None:
    error = assert_envelope(client.post(path, json=body), 422, "invalid_request")
    assert hint in error["message"]


@pytest.mark.parametrize(
    "headers", [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}]
)
def test_a_body_without_the_json_content_type_is_told_to_send_it(client, headers: dict) -> None:
    error = assert_envelope(post_raw(client, "/score", '{"text": "the"}', headers), 422, "invalid_request")
    assert "content-type: application/json" in error["message"]


_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from(list("\"'([{<)]}>,.;:!?%$#/*-sn't1 N\ud800\udfff\x00")), max_size=60),
)
_VALUE = st.one_of(
    _TEXT,
    st.lists(_TEXT, max_size=4),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_FIELDS = ["text", "sentences", "normalize", "add_eos", "per_token", "prefix", "prefixes", "top_k", "candidates", "x"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/score", "/next-word"]),
    body=st.dictionaries(st.sampled_from(_FIELDS), _VALUE, max_size=4),
)
def test_no_request_body_gets_a_5xx(client, path: str, body: dict) -> None:
    r = post_raw(client, path, json.dumps(body, ensure_ascii=True, allow_nan=True))
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert_envelope(r)
    else:
        r.json()  # an answer that encodes


_SCORE = st.fixed_dictionaries(
    {},
    optional={"normalize": st.booleans(), "add_eos": st.booleans(), "per_token": st.booleans()},
).flatmap(
    lambda flags: st.one_of(
        st.builds(lambda t: {**flags, "text": t}, _TEXT),
        st.builds(lambda s: {**flags, "sentences": s}, st.lists(_TEXT, min_size=1, max_size=3)),
    )
)
_NEXT = st.fixed_dictionaries(
    {},
    optional={
        "normalize": st.booleans(),
        "top_k": st.integers(1, 20),
        "candidates": st.lists(_TEXT, max_size=3),
    },
).flatmap(
    lambda extra: st.one_of(
        st.builds(lambda t: {**extra, "prefix": t}, _TEXT),
        st.builds(lambda p: {**extra, "prefixes": p}, st.lists(_TEXT, min_size=1, max_size=3)),
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.one_of(st.tuples(st.just("/score"), _SCORE), st.tuples(st.just("/next-word"), _NEXT)))
def test_no_well_formed_request_with_hostile_text_gets_a_5xx(client, request: tuple[str, dict]) -> None:
    """Bodies of the right shape reach the model: hostile text must not break it or the answer's encoding."""
    path, body = request
    r = post_raw(client, path, json.dumps(body, ensure_ascii=True))
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert_envelope(r)


HEAVY_TEXT = "(" * 2000 + "the stock market " * 500 + ")" * 2000


@pytest.mark.parametrize(
    ("path", "heavy"),
    [
        ("/score", {"sentences": [HEAVY_TEXT] * 200}),
        ("/v1/completions", {"prompt": [HEAVY_TEXT] * 200, "echo": True, "logprobs": 5, "max_tokens": 50}),
    ],
)
def test_a_request_whose_text_takes_long_gets_its_504_on_time_and_healthz_is_answered_meanwhile(
    make_app, path: str, heavy: dict
) -> None:
    """Normalising 200 texts of 12,500 characters takes longer than the timeout here (0.25 s; the request's
    tokens in all allowed): it runs off the event loop, and the deadline (counted from the request's arrival)
    ends it at LMSERVE_REQUEST_TIMEOUT_S, not after; the OpenAI route goes the same way as the native one."""
    app = make_app(request_timeout_s=0.25, max_request_tokens=10**7)

    async def body(client):
        async def timed(coro):
            start = time.perf_counter()
            r = await coro
            return r, time.perf_counter() - start

        scoring = asyncio.ensure_future(timed(client.post(path, json=heavy)))
        await asyncio.sleep(0.1)  # the heavy request is being prepared
        health = []
        while not scoring.done():
            health.append((await timed(client.get("/healthz")))[1])
            await asyncio.sleep(0.05)
        return (await scoring), health

    (r, took), health = run_async(app, body)
    error = assert_envelope(r, 504, "timeout")
    assert "0.25 s" in error["message"]
    assert took < 2.0, f"504 after {took:.2f} s with a 0.25 s timeout"
    assert health and max(health) < 0.5, f"/healthz took up to {max(health):.3f} s"


def test_an_answer_of_too_many_words_is_refused_up_front(client) -> None:
    """256 prefixes x (top_k 100 + 100 candidates): a 7 KB request asking for a 5 MB answer."""
    body = {"prefixes": ["the"] * 256, "top_k": 100, "candidates": ["stock"] * 100}
    error = assert_envelope(client.post("/next-word", json=body), 422, "limit_exceeded")
    assert error["details"] == {"limit": "max_answer_words", "value": 51_200, "max": 25_600}
    assert "fewer prefixes" in error["message"]
    body = {"prefixes": ["the"] * 128, "top_k": 100, "candidates": ["stock"] * 100}  # 25,600: the limit
    r = client.post("/next-word", json=body)
    assert r.status_code == 200 and len(r.json()["results"]) == 128


def _raw_post(app, path: str, chunks: list[dict], headers: list | None = None) -> tuple[int | None, dict]:
    """One POST straight into the ASGI app, its body as the given receive() messages, then silence."""

    async def main():
        sent: dict = {}
        queue = list(chunks)

        async def receive():
            if queue:
                return queue.pop(0)
            await asyncio.sleep(3600)  # a stalled client

        async def send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
            "client": ("127.0.0.1", 1234),
            "server": ("test", 80),
        }
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), 30)
        return sent.get("status"), parse_metrics(app.state.metrics.render().decode())

    return asyncio.run(main())


def test_a_stalled_upload_gets_408_after_the_body_timeout(make_app) -> None:
    app = make_app(body_timeout_s=0.3)
    start = time.perf_counter()
    status, samples = _raw_post(app, "/score", [{"type": "http.request", "body": b'{"text": "th', "more_body": True}])
    assert status == 408 and time.perf_counter() - start < 10
    assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="body_timeout") == 1


def test_a_client_that_hangs_up_mid_upload_is_counted_499_not_500(make_app) -> None:
    chunks = [{"type": "http.request", "body": b'{"text": "th', "more_body": True}, {"type": "http.disconnect"}]
    status, samples = _raw_post(make_app(), "/score", chunks)
    assert status in (None, 499)  # nobody is there to read it
    assert metric(samples, "lmserve_requests_total", endpoint="/score", code="499") == 1
    assert metric_or_zero(samples, "lmserve_requests_total", endpoint="/score", code="500") == 0
    assert metric(samples, "lmserve_requests_rejected_total", endpoint="/score", reason="client_closed") == 1


@pytest.mark.parametrize("path", ["/healthz", "/nowhere", "/model"])
def test_a_route_that_takes_no_body_never_reads_one(make_app, path: str) -> None:
    """A stalled 4 MB upload to a route without a body (or to no route) is answered at once, unread."""
    chunks = [{"type": "http.request", "body": b"x" * 1000, "more_body": True}]
    status, _ = _raw_post(make_app(), path, chunks, [(b"content-length", b"4194303")])
    assert status in (200, 404, 405)


def test_the_key_is_checked_before_the_body_is_read(make_app) -> None:
    """No key: 401 at once, though the body has not finished (nor would it ever)."""
    chunks = [{"type": "http.request", "body": b"x" * 1000, "more_body": True}]
    app = make_app(api_key="s3cret", body_timeout_s=30)
    start = time.perf_counter()
    status, _ = _raw_post(app, "/score", chunks, [(b"content-length", b"4194303")])
    assert status == 401 and time.perf_counter() - start < 10


def test_the_work_of_a_request_past_its_deadline_stops_at_the_next_item() -> None:
    """A 504 does not leave a worker thread normalising the rest of the request's texts for seconds."""
    request = SimpleNamespace(
        app=SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(request_timeout_s=0.35))),
        state=SimpleNamespace(arrived=time.monotonic()),
    )
    deadline = Deadline(request)  # type: ignore[arg-type]
    done = []

    def work(item: int) -> int:
        time.sleep(0.1)
        done.append(item)
        return item

    with pytest.raises(EngineTimeoutError):
        deadline.each(work, range(20))
    assert 3 <= len(done) <= 5, done


def test_a_request_of_too_many_tokens_in_all_is_refused_before_any_is_queued(serve) -> None:
    """Each text within max_tokens, all of them together past max_request_tokens: one request may not hold the
    model for the whole of its timeout. Every route that runs the model counts the same way."""
    sentence = "the stock market rose " * 10  # 40 words: 42 tokens with the priming <eos> and the closing one
    with serve(max_request_tokens=100) as client:
        error = assert_envelope(client.post("/score", json={"sentences": [sentence] * 3}), 422, "limit_exceeded")
        assert error["details"] == {"limit": "max_request_tokens", "value": 3 * 42, "max": 100}
        assert "split it" in error["message"]
        error = assert_envelope(client.post("/next-word", json={"prefixes": [sentence] * 3}), 422, "limit_exceeded")
        assert error["details"]["limit"] == "max_request_tokens"
        body = {"prompt": [sentence] * 3, "max_tokens": 1}
        error = assert_envelope(client.post("/v1/completions", json=body), 422, "limit_exceeded")
        assert error["details"]["limit"] == "max_request_tokens"
        error = assert_envelope(client.post("/score", json={"sentences": [sentence] * 100}), 422, "limit_exceeded")
        assert error["details"]["value"] == 3 * 42  # counted as the texts are encoded: it stopped at the third
        assert client.post("/score", json={"sentences": [sentence] * 2}).status_code == 200  # 84: within
        samples = parse_metrics(client.get("/metrics").text)
        # The refused ones never reached the engine: one batch, whatever closed it.
        assert metric_sum(samples, "lmserve_batches_total") == 1
