"""Generation: greedy is the argmax chain of full forward passes, sampling follows temperature and top_p and is
reproducible with a seed, streams stop at <eos>, at a stop string or at max_tokens, and a batch of streams gives
what each stream gives alone."""

from __future__ import annotations

import pytest
import torch

from lm.generate import GenerationStream, SamplingParams, choose_token, generate, step
from lm.scoring import final_states
from lm.vocab import Vocabulary


def full_pass_dist(model, ids: list[int]) -> torch.Tensor:
    """The next word's log-distribution after `ids`, from one plain forward pass of all of them."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    return torch.log_softmax(logits[0, -1], dim=-1, dtype=torch.float32)


@pytest.fixture
def model(make_model):
    return make_model(init_scale=1.0, seed=3)


def test_greedy_is_the_argmax_chain_of_full_forward_passes(model, tiny_vocab) -> None:
    prompt = [tiny_vocab.eos_id, tiny_vocab.stoi["the"]]
    (s,) = generate(model, tiny_vocab, [prompt], [SamplingParams(max_tokens=12, temperature=0)])
    ids = list(prompt)
    for token, lp in zip(s.ids, s.logprobs, strict=True):
        dist = full_pass_dist(model, ids)
        assert token == int(torch.argmax(dist))
        assert lp == pytest.approx(float(dist[token]), abs=1e-5)
        ids.append(token)
    assert s.finish_reason in ("stop", "length")
    if s.finish_reason == "length":
        assert len(s.ids) == 12


def test_step_carries_the_state_exactly(model, tiny_vocab) -> None:
    """One step from the carried state gives the distribution a full pass over the longer prefix gives."""
    prefix = [tiny_vocab.eos_id, 2, 3, 4]
    h, c = final_states(model, [prefix])
    dist, _ = step(model, [5], (h, c))
    torch.testing.assert_close(dist[0], full_pass_dist(model, [*prefix, 5]), rtol=0, atol=1e-5)


def test_a_seed_reproduces_the_sample_and_another_seed_differs(model, tiny_vocab) -> None:
    prompt = [tiny_vocab.eos_id]

    def sample(seed: int) -> list[int]:
        (s,) = generate(model, tiny_vocab, [prompt], [SamplingParams(max_tokens=30, temperature=1.5, seed=seed)])
        return s.ids

    assert sample(1) == sample(1)
    assert any(sample(1) != sample(seed) for seed in range(2, 6))


def test_batched_streams_equal_each_stream_alone(model, tiny_vocab) -> None:
    eos = tiny_vocab.eos_id
    prompts = [[eos], [eos, 2, 3], [eos, 8, 9, 5, 6], [eos, 4]]
    params = [
        SamplingParams(max_tokens=9, temperature=0),
        SamplingParams(max_tokens=4, temperature=1.0, seed=5),
        SamplingParams(max_tokens=20, temperature=0.7, top_p=0.8, seed=9),
        SamplingParams(max_tokens=1, temperature=0),
    ]
    together = generate(model, tiny_vocab, prompts, params)
    for prompt, p, s in zip(prompts, params, together, strict=True):
        (alone,) = generate(model, tiny_vocab, [prompt], [p])
        assert s.ids == alone.ids
        assert s.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
        assert s.text == alone.text and s.finish_reason == alone.finish_reason


def test_top_p_samples_only_from_the_nucleus() -> None:
    logdist = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    seen = {choose_token(logdist, 1.0, 0.75, g) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.75 needs the second word; 0.8 >= 0.75 needs no third
    seen = {choose_token(logdist, 1.0, 0.5, g) for _ in range(100)}
    assert seen == {0}
    seen = {choose_token(logdist, 1.0, 1.0, g) for _ in range(2000)}
    assert seen == {0, 1, 2, 3}


def test_temperature_sharpens_and_flattens() -> None:
    logdist = torch.log(torch.tensor([0.6, 0.4]))
    g = torch.Generator().manual_seed(0)

    def share_of_first(t: float) -> float:
        return sum(choose_token(logdist, t, 1.0, g) == 0 for _ in range(2000)) / 2000

    assert share_of_first(0.2) > 0.85  # 0.6^5 / (0.6^5 + 0.4^5) = 0.88
    assert 0.5 < share_of_first(1.0) < 0.7
    assert choose_token(logdist, 0.0, 1.0, None) == 0


def test_eos_ends_the_stream_outside_the_text(tiny_vocab) -> None:
    s = GenerationStream(SamplingParams(max_tokens=10, temperature=0), tiny_vocab)
    assert s.advance(one_hot(tiny_vocab, "the")) == tiny_vocab.stoi["the"]
    assert s.advance(one_hot(tiny_vocab, "<eos>")) is None
    assert (s.text, s.finish_reason) == ("the", "stop")
    assert s.ids == [tiny_vocab.stoi["the"], tiny_vocab.eos_id]
    assert s.advance(one_hot(tiny_vocab, "cat")) is None and len(s.ids) == 2


def test_a_stop_string_cuts_the_text_before_it(tiny_vocab) -> None:
    s = GenerationStream(SamplingParams(max_tokens=10, temperature=0, stop=("sat on",)), tiny_vocab)
    for word in ("the", "cat", "sat"):
        assert s.advance(one_hot(tiny_vocab, word)) is not None
    assert s.advance(one_hot(tiny_vocab, "on")) is None
    assert (s.text, s.finish_reason, s.stop_reason) == ("the cat ", "stop", "sat on")


def test_max_tokens_ends_with_length(tiny_vocab) -> None:
    s = GenerationStream(SamplingParams(max_tokens=2, temperature=0), tiny_vocab)
    assert s.advance(one_hot(tiny_vocab, "the")) is not None
    assert s.advance(one_hot(tiny_vocab, "cat")) is None
    assert (s.text, s.finish_reason) == ("the cat", "length")
    assert GenerationStream(SamplingParams(max_tokens=0), tiny_vocab).finish_reason == "length"


@pytest.mark.parametrize(
    "bad", [{"max_tokens": -1}, {"temperature": -0.1}, {"top_p": 0}, {"top_p": 1.5}, {"stop": ("",)}]
)
def test_bad_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def one_hot(vocab: Vocabulary, word: str) -> torch.Tensor:
    """A log-distribution that puts (almost) all of the mass on `word`."""
    logdist = torch.full((len(vocab),), -50.0)
    logdist[vocab.stoi[word]] = 0.0
    return logdist


def test_a_vanishing_temperature_is_the_greedy_limit_not_nan() -> None:
    """5e-324 (the smallest float) overflows logdist / temperature: the choice must still be the argmax."""
    logdist = torch.log_softmax(torch.tensor([0.1, 2.0, -1.0, 1.9]), -1)
    assert choose_token(logdist, 5e-324, 1.0, torch.Generator().manual_seed(0)) == 1
