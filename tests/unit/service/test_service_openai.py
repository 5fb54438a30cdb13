"""The OpenAI-compatible routes on the real app (tiny model): /v1/completions' logprobs equal a by-hand forward
pass and /score, the top alternatives hold the token's own float, greedy generation is the argmax chain of full
forward passes, a seed reproduces a sample, the tokenizer routes, and errors in the envelope OpenAI clients read."""

from __future__ import annotations

import pytest
import torch
from service_helpers import assert_envelope, reference_logprobs, reference_next_logprobs

from lm.vocab import EOS
from service.runner import ModelRunner, NextJob, StepJob


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("primed", [True, False])
def test_echo_logprobs_are_the_forward_pass_and_score(client, service_ckpt, primed: bool) -> None:
    words = ["the", "stock", "market", "rose"]
    prompt = ("<eos> " if primed else "") + "The stock market rose."
    out = complete(client, model=service_ckpt.path.name, prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    assert out["object"] == "text_completion" and out["model"] == service_ckpt.path.name
    (choice,) = out["choices"]
    lp = choice["logprobs"]
    reference = reference_logprobs(service_ckpt, words)  # log p(word | <eos>, words before)
    score = client.post("/score", json={"text": prompt.removeprefix("<eos> "), "add_eos": False, "per_token": True})
    native = score.json()["results"][0]["token_logprobs"]
    if primed:
        assert lp["tokens"] == [EOS, *words]
        expected = reference
    else:
        assert lp["tokens"] == words
        expected, native = reference[1:], native[1:]  # the first token has no logprob
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-5)
    assert lp["token_logprobs"][1:] == pytest.approx(native, abs=1e-6)
    for token, value, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        assert top[token] == value  # bit for bit: lm-eval's is_greedy compares these floats exactly
        assert len(top) in (2, 3)
    assert choice["text"] == " ".join(lp["tokens"])
    assert lp["text_offset"] == [
        choice["text"].index(t, o) for t, o in zip(lp["tokens"], lp["text_offset"], strict=True)
    ]
    assert (choice["finish_reason"], choice["oov"]) == ("length", [])
    assert out["usage"] == {
        "prompt_tokens": len(lp["tokens"]),
        "completion_tokens": 0,
        "total_tokens": len(lp["tokens"]),
    }


def test_token_id_prompts_as_lm_eval_sends_them(client, service_ckpt) -> None:
    """lm-eval: context + continuation as ids, echo, max_tokens 1, logprobs 1; it sums token_logprobs[ctxlen:-1]."""
    vocab = service_ckpt.vocab
    context, continuation = ["the", "stock"], ["market", "rose"]
    ids = vocab.encode(context + continuation)
    out = complete(client, prompt=[ids, [vocab.eos_id, *ids]], max_tokens=1, echo=True, logprobs=1, temperature=0)
    reference = reference_logprobs(service_ckpt, context + continuation)
    plain, primed = out["choices"]
    assert plain["logprobs"]["tokens"][:-1] == context + continuation
    assert sum(plain["logprobs"]["token_logprobs"][len(context) : -1]) == pytest.approx(sum(reference[2:]), abs=1e-5)
    assert sum(primed["logprobs"]["token_logprobs"][1:-1]) == pytest.approx(sum(reference), abs=1e-5)
    # The one generated token is the argmax after the whole prompt, and greedy by lm-eval's test.
    after = reference_next_logprobs(service_ckpt, context + continuation)
    generated = plain["logprobs"]["tokens"][-1]
    assert generated == vocab.itos[int(torch.argmax(after))]
    last_top = plain["logprobs"]["top_logprobs"][-1]
    assert plain["logprobs"]["token_logprobs"][-1] == max(last_top.values())


def test_greedy_generation_is_the_argmax_chain(client, service_ckpt) -> None:
    out = complete(client, prompt="the company said", max_tokens=10, temperature=0, logprobs=0)
    choice = out["choices"][0]
    tokens = ["the", "company", "said"]
    for token, value in zip(choice["logprobs"]["tokens"], choice["logprobs"]["token_logprobs"], strict=True):
        dist = reference_next_logprobs(service_ckpt, tokens)
        assert token == service_ckpt.vocab.itos[int(torch.argmax(dist))]
        assert value == pytest.approx(dist[service_ckpt.vocab.stoi[token]].item(), abs=1e-5)
        tokens.append(token)
    generated = choice["logprobs"]["tokens"]
    assert choice["text"] == " ".join(t for t in generated if t != EOS)
    assert choice["finish_reason"] == ("stop" if generated[-1] == EOS else "length")
    assert out["usage"]["completion_tokens"] == len(generated) <= 10


def test_a_seed_reproduces_a_sample(client) -> None:
    def sample(seed: int) -> str:
        body = {"prompt": ["the", "a"], "max_tokens": 15, "temperature": 1.5, "seed": seed}
        return [c["text"] for c in complete(client, **body)["choices"]]

    assert sample(3) == sample(3)
    assert any(sample(3) != sample(s) for s in (4, 5, 6))


def test_a_stop_string_cuts_the_completion(client) -> None:
    free = complete(client, prompt="the", max_tokens=6, temperature=0)["choices"][0]["text"].split()
    assert len(free) >= 3, free
    stop, full = f"{free[1]} {free[2]}", " ".join(free)
    choice = complete(client, prompt="the", max_tokens=6, temperature=0, stop=[stop])["choices"][0]
    expected = full[: full.index(stop)]  # the text before the stop string's first appearance
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == (expected, "stop", stop)


def test_oov_words_are_reported_per_choice(client) -> None:
    out = complete(client, prompt=["the zebra rose", "the stock"], max_tokens=0, echo=True)
    assert [c["oov"] for c in out["choices"]] == [["zebra"], []]
    assert out["choices"][0]["text"] == "the <unk> rose" and out["choices"][0]["logprobs"] is None


def test_a_generation_step_from_the_carried_state_is_the_longer_prefix(service_ckpt, make_settings) -> None:
    from lm.checkpoint import load_checkpoint

    runner = ModelRunner(load_checkpoint(service_ckpt.path), make_settings(prefix_cache_entries=0))
    eos, v = service_ckpt.vocab.eos_id, service_ckpt.vocab.stoi
    (first,) = runner.run([StepJob([eos, v["the"], v["stock"]])])
    (second,) = runner.run([StepJob([v["market"]], first.state)])
    (longer,) = runner.run([NextJob([eos, v["the"], v["stock"], v["market"]])])
    torch.testing.assert_close(second.logdist, longer, rtol=0, atol=1e-5)


def test_models_and_the_tokenizer_routes(client, service_ckpt) -> None:
    vocab = service_ckpt.vocab
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == service_ckpt.path.name and card["max_model_len"] == 4096
    info = client.get("/tokenizer_info").json()
    assert (info["eos_token"], info["eos_token_id"], info["vocab_size"]) == (EOS, vocab.eos_id, len(vocab))
    r = client.post("/tokenize", json={"prompt": "The zebra rose 5%."}).json()
    assert r["tokens"] == vocab.encode(["the", "<unk>", "rose", "N", "N"]) and r["count"] == 5
    assert r["max_model_len"] == 4096
    assert client.post("/tokenize", json={"prompt": EOS}).json()["tokens"] == [vocab.eos_id]  # lm-eval's eos lookup
    r = client.post("/tokenize", json={"prompt": "the", "add_special_tokens": True, "return_token_strs": True}).json()
    assert r["token_strs"] == [EOS, "the"]
    assert client.post("/detokenize", json={"tokens": vocab.encode(["the", "stock"])}).json() == {"prompt": "the stock"}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": "the", "logprobs": 101}, 422, "logprobs"),
        ({"prompt": "the", "stream": True}, 422, "stream"),
        ({"prompt": [99999]}, 422, "prompt"),
        ({"prompt": "the", "model": "gpt-4"}, 404, "gpt-4"),
        ({"prompt": []}, 422, "prompts"),
        ({"prompt": "the", "n": 2}, 422, "n"),
        ({"prompt": "the", "max_tokens": 257}, 422, "max_tokens"),
        ({"prompt": "the", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({"max_tokens": 1}, 422, "prompt"),
    ],
)
def test_bad_requests_get_a_clear_error_in_the_openai_shape(client, body: dict, status: int, field: str) -> None:
    error = assert_envelope(client.post("/v1/completions", json=body), status)
    assert field in error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_bad_tokenizer_requests(client) -> None:
    assert_envelope(client.post("/detokenize", json={"tokens": [-1]}), 422)
    assert_envelope(client.post("/tokenize", json={"text": "the"}), 422)


def test_the_openai_routes_are_behind_the_api_key(serve) -> None:
    with serve(api_key="k3y") as c:
        for method, path, body in [
            ("POST", "/v1/completions", {"prompt": "the"}),
            ("GET", "/v1/models", None),
            ("GET", "/tokenizer_info", None),
            ("POST", "/tokenize", {"prompt": "the"}),
            ("POST", "/detokenize", {"tokens": [1]}),
        ]:
            error = assert_envelope(c.request(method, path, json=body), 401)
            assert error["type"] == "authentication_error"
            ok = c.request(method, path, json=body, headers={"Authorization": "Bearer k3y"})
            assert ok.status_code == 200, ok.text


def test_logprobs_zero_gives_each_token_alone(client) -> None:
    lp = complete(client, prompt="<eos> the stock", max_tokens=1, echo=True, logprobs=0, temperature=0)["choices"][0]
    tops = lp["logprobs"]["top_logprobs"]
    assert tops[0] is None
    for token, value, top in zip(
        lp["logprobs"]["tokens"][1:], lp["logprobs"]["token_logprobs"][1:], tops[1:], strict=True
    ):
        assert top == {token: value}
