"""The OpenAI protocol models and the pure assembly of a choice's `logprobs`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.openai_protocol import (
    CompletionRequest,
    TokenResult,
    assemble_logprobs,
    prompts_of,
    stop_strings,
    top_alternatives,
)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("the cat", ["the cat"]),
        (["a", "b"], ["a", "b"]),
        ([1, 5, 7], [[1, 5, 7]]),
        ([[1, 5], [7]], [[1, 5], [7]]),
    ],
)
def test_every_prompt_form(prompt, expected) -> None:
    assert prompts_of(CompletionRequest(prompt=prompt).prompt) == expected


def test_fields_clients_send_are_accepted_and_ignored() -> None:
    body = CompletionRequest.model_validate(
        {"prompt": "x", "logit_bias": {"1": 2}, "presence_penalty": 0.5, "best_of": 1, "user": "me", "seed": 3}
    )
    assert body.max_tokens == 16 and body.seed == 3 and body.echo is False


@pytest.mark.parametrize("bad", [{"max_tokens": -1}, {"logprobs": -1}, {"top_p": 0}, {"n": 2}, {"temperature": -1}])
def test_out_of_range_fields_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": "x", **bad})


def test_stop_strings() -> None:
    assert stop_strings(None) == ()
    assert stop_strings("\n") == ("\n",)
    assert stop_strings(["a", "b"]) == ("a", "b")


def test_the_token_is_always_among_its_alternatives_with_its_own_value() -> None:
    itos = ["<unk>", "<eos>", "the", "cat"]
    top = top_alternatives([-0.1, -2.0], [2, 3], itos, "cat", -2.0)
    assert top == {"the": -0.1, "cat": -2.0}
    top = top_alternatives([-0.1], [2], itos, "cat", -2.5)
    assert top == {"the": -0.1, "cat": -2.5}
    assert top_alternatives([], [], itos, "cat", -2.5) == {"cat": -2.5}


def test_text_offsets_point_at_each_token_of_the_text() -> None:
    results = [
        TokenResult("<eos>", None, None),
        TokenResult("the", -1.0, {"the": -1.0}),
        TokenResult("cat", -2.0, {"cat": -2.0}),
        TokenResult("<eos>", -0.5, {"<eos>": -0.5}),  # generated: ends the choice, not in the text
    ]
    text = "<eos> the cat"
    lp = assemble_logprobs(results, text)
    assert lp.tokens == ["<eos>", "the", "cat", "<eos>"]
    assert lp.text_offset == [0, 6, 10, 13]
    assert [text[o : o + len(t)] for o, t in zip(lp.text_offset[:3], lp.tokens[:3], strict=True)] == lp.tokens[:3]
    assert lp.token_logprobs == [None, -1.0, -2.0, -0.5]
    assert lp.top_logprobs[0] is None and lp.top_logprobs[2] == {"cat": -2.0}
