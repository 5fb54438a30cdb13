"""Text generation: greedy, or temperature and nucleus (top-p) sampling, one LSTM step per generated word.

    from lm.generate import SamplingParams, generate
    streams = generate(model, vocab, [prompt_ids], [SamplingParams(max_tokens=20, temperature=0.8, seed=1)])

The prompt is run once; after that each generated word costs one step of the LSTM from the carried state
(never the whole prefix again), so the 100th word costs what the 1st does. Several streams advance together,
one batched step per generated word. A stream's randomness is its own `torch.Generator`: the same seed gives
the same words, whatever else runs in the same batch.

`GenerationStream` is the per-stream state machine (choose a word from a log-distribution, check the stop
conditions); `generate` drives streams over a model here, and the service drives the same streams one engine
step at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lm.model import LSTMLanguageModel, State
from lm.scoring import final_states, next_from_states
from lm.vocab import Vocabulary


@dataclass(frozen=True)
class SamplingParams:
    """How one stream chooses its words; temperature 0 is greedy (the most probable word every time)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the completion ends before the first of these strings

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, not {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("a stop string must not be empty")


def choose_token(logdist: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One word id from a log-distribution (V,): its argmax at temperature 0, else a sample of
    softmax(logdist / temperature) restricted to the smallest set of most probable words whose mass reaches top_p."""
    if temperature == 0:
        return int(torch.argmax(logdist))
    # Shifted by the maximum first: at a temperature so small that logdist / temperature overflows (5e-324),
    # the most probable word keeps 0 and the rest go to -inf, which is the greedy limit, not NaN.
    logdist = logdist.double()
    probs = torch.softmax((logdist - logdist.max()) / temperature, dim=-1)
    if top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sorted_p, 0) - sorted_p) < top_p  # the mass before a word is short of top_p
        return int(order[torch.multinomial(sorted_p[keep], 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def join_words(words: Sequence[str]) -> str:
    """A word-level model's text: its words separated by single spaces."""
    return " ".join(words)


@dataclass
class GenerationStream:
    """One completion being generated: the words so far, their log-probabilities, and why it ended.

    `advance(logdist)` takes the model's log-distribution of the next word and returns the chosen word's id to
    feed back into the model, or None when the stream has finished (`finish_reason` "stop" at `<eos>` or a
    stop string, "length" at max_tokens). `<eos>` ends the stream; it is kept in `ids` (and its logprob) but
    not in `text`. A stop string cuts `text` before it, and `ids` after the word that completed it.
    """

    params: SamplingParams
    vocab: Vocabulary
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    dists: list[Tensor] = field(default_factory=list, repr=False)  # the log-distribution each id was chosen from
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | None = None  # the stop string that ended the stream, if one did
    keep_dists: bool = False  # keep each step's distribution (top_logprobs need it)
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.params.temperature > 0 and self.generator is None:
            self.generator = torch.Generator()
            if self.params.seed is not None:
                self.generator.manual_seed(self.params.seed)
            else:
                self.generator.seed()
        if self.params.max_tokens == 0:
            self.finish_reason = "length"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def advance(self, logdist: Tensor) -> int | None:
        """Choose the next word from `logdist` (V,), float32 natural logs; see the class docstring."""
        if self.finished:
            return None
        p = self.params
        token = choose_token(logdist, p.temperature, p.top_p, self.generator)
        self.ids.append(token)
        self.logprobs.append(float(logdist[token]))
        if self.keep_dists:
            self.dists.append(logdist)
        if token == self.vocab.eos_id:
            self.finish_reason = "stop"
            return None
        word = self.vocab.itos[token]
        self.text = f"{self.text} {word}" if self.text else word
        for stop in p.stop:
            cut = self.text.find(stop)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason, self.stop_reason = "stop", stop
                return None
        if len(self.ids) >= p.max_tokens:
            self.finish_reason = "length"
            return None
        return token


@torch.inference_mode()
def step(model: LSTMLanguageModel, tokens: Sequence[int], state: State) -> tuple[Tensor, State]:
    """One LSTM step for B streams: (the next word's log-distributions (B, V), the new state), from the state
    (h, c), each (L, B, H), after each stream's text so far and the word `tokens[b]` that follows it."""
    h, c = final_states(model, [[t] for t in tokens], list(zip(state[0].unbind(1), state[1].unbind(1), strict=True)))
    return next_from_states(model, h), (h, c)


@torch.inference_mode()
def generate(
    model: LSTMLanguageModel,
    vocab: Vocabulary,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    keep_dists: bool = False,
) -> list[GenerationStream]:
    """Complete each prompt (token ids, the priming `<eos>` first) with its own sampling parameters.

    The prompts run once, together; then every unfinished stream takes one step per generated word.
    """
    if len(prompts) != len(params):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling parameters")
    streams = [GenerationStream(p, vocab, keep_dists=keep_dists) for p in params]
    if not prompts:
        return streams
    h, c = final_states(model, prompts)
    dists = next_from_states(model, h)
    active = list(range(len(streams)))  # stream index of each state column
    while True:
        fed = [(col, streams[i].advance(dists[col])) for col, i in enumerate(active)]
        keep = [(col, t) for col, t in fed if t is not None]
        if not keep:
            return streams
        cols = torch.tensor([col for col, _ in keep], device=h.device)
        active = [active[col] for col, _ in keep]
        dists, (h, c) = step(model, [t for _, t in keep], (h[:, cols], c[:, cols]))
