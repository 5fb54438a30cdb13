"""The `openai` Python SDK against the service: scoring with echo + logprobs, greedy generation equal to the argmax
chain of /next-word, seeded sampling, the model list, and errors the SDK raises as its own exceptions."""

from __future__ import annotations

import openai
import pytest
from client_helpers import next_word, score


@pytest.fixture(scope="module")
def sdk(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def model_id(sdk: openai.OpenAI) -> str:
    return sdk.models.list().data[0].id


def test_the_model_is_listed_with_its_context_length(sdk, server) -> None:
    models = sdk.models.list().data
    assert len(models) == 1
    assert models[0].id == "ptb-cpu"
    assert models[0].model_extra["max_model_len"] > 0


@pytest.mark.parametrize("prompt", ["<eos> the stock market rose sharply on friday", "the stock market rose sharply"])
def test_echo_logprobs_equal_score(sdk, server, prompt: str) -> None:
    out = sdk.completions.create(model=model_id(sdk), prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    (choice,) = out.choices
    lp = choice.logprobs
    (ref,) = score(server, [prompt.removeprefix("<eos> ")])
    words = ref["tokens"]
    if prompt.startswith("<eos>"):
        # The <eos> is the sentence start: every word is predicted from it, as /score does.
        assert lp.tokens == ["<eos>", *words]
        expected = ref["token_logprobs"]
    else:
        assert lp.tokens == words
        expected = ref["token_logprobs"][1:]  # the first token has no logprob (OpenAI's convention)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top[token] == value  # the same float, from the same log-softmax row
        assert 3 <= len(top) <= 4 and max(top.values()) >= value
    assert choice.text == " ".join(lp.tokens)
    assert lp.text_offset == [choice.text.index(t, o) for t, o in zip(lp.tokens, lp.text_offset, strict=True)]
    assert choice.finish_reason == "length"
    assert out.usage.prompt_tokens == len(lp.tokens) and out.usage.completion_tokens == 0


def test_oov_words_and_normalisation_are_visible(sdk, server) -> None:
    out = sdk.completions.create(
        model=model_id(sdk), prompt="The xylophonist said 5% more.", max_tokens=0, echo=True, logprobs=0
    )
    choice = out.choices[0]
    assert choice.logprobs.tokens == ["the", "<unk>", "said", "N", "N", "more"]
    assert choice.model_extra["oov"] == ["xylophonist"]


def test_greedy_generation_is_the_argmax_chain_of_next_word(sdk, server) -> None:
    prompt = "the company said"
    out = sdk.completions.create(model=model_id(sdk), prompt=prompt, max_tokens=8, temperature=0, logprobs=1)
    choice = out.choices[0]
    words = choice.text.split()
    assert words and choice.finish_reason in ("length", "stop")
    text = prompt
    for word, value in zip(choice.logprobs.tokens, choice.logprobs.token_logprobs, strict=False):
        best = next_word(server, text)["top_k"][0]
        assert word == best["word"]
        assert value == pytest.approx(best["logprob"], abs=1e-4)
        if word == "<eos>":
            break
        text += " " + word
    assert words == [t for t in choice.logprobs.tokens if t != "<eos>"]
    if choice.finish_reason == "length":
        assert len(choice.logprobs.tokens) == 8
    assert out.usage.completion_tokens == len(choice.logprobs.tokens)


def test_sampling_with_a_seed_is_reproducible(sdk) -> None:
    def sample(seed: int) -> str:
        out = sdk.completions.create(
            model=model_id(sdk), prompt="the stock market", max_tokens=12, temperature=1.0, top_p=0.95, seed=seed
        )
        return out.choices[0].text

    first = sample(11)
    assert first == sample(11)
    assert any(sample(seed) != first for seed in (12, 13, 14))


def test_a_stop_string_ends_the_completion(sdk) -> None:
    free = sdk.completions.create(model=model_id(sdk), prompt="the company said", max_tokens=6, temperature=0)
    words = free.choices[0].text.split()
    assert len(words) >= 3
    stop, full = " ".join(words[1:3]), " ".join(words)
    out = sdk.completions.create(model=model_id(sdk), prompt="the company said", max_tokens=6, temperature=0, stop=stop)
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_several_prompts_in_one_request(sdk, server) -> None:
    prompts = ["the stock market rose", "<eos> interest rates fell"]
    out = sdk.completions.create(model=model_id(sdk), prompt=prompts, max_tokens=0, echo=True, logprobs=1)
    assert [c.index for c in out.choices] == [0, 1]
    refs = score(server, ["the stock market rose", "interest rates fell"])
    assert out.choices[0].logprobs.token_logprobs[1:] == pytest.approx(refs[0]["token_logprobs"][1:], abs=1e-4)
    assert out.choices[1].logprobs.token_logprobs[1:] == pytest.approx(refs[1]["token_logprobs"], abs=1e-4)


def test_errors_come_back_as_the_sdk_exceptions_with_the_message(sdk) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        sdk.completions.create(model=model_id(sdk), prompt="the", max_tokens=0, echo=True, logprobs=100_000)
    assert e.value.status_code == 422
    assert "logprobs" in e.value.message
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.APIStatusError) as e:
        sdk.completions.create(model=model_id(sdk), prompt="the", max_tokens=4, stream=True)
    assert e.value.status_code in (400, 422) and "stream" in e.value.message
