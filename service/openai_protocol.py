"""The OpenAI-compatible API's bodies, field for field with the contract's own names (as vLLM's OpenAI server
serves them), and the pure functions that assemble a completion's `logprobs` from per-token results.

Requests accept and ignore the fields this service has no use for (`logit_bias`, `presence_penalty`, `user`, ...):
clients send them as a matter of course.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import HARD_MAX_CHARS, HARD_MAX_ITEMS, TextRequest

# One prompt: text, or token ids; or several of either.
Prompt = str | list[str] | list[int] | list[list[int]]


class _OpenAIRequest(TextRequest):
    model_config = ConfigDict(extra="ignore")


class CompletionRequest(_OpenAIRequest):
    model: str | None = Field(None, description="the served model's id (from /v1/models); any value is accepted")
    prompt: Prompt = Field(
        description="a string, a list of strings, a list of token ids, or a list of id lists; a prompt that starts "
        "with <eos> (text or id) is read from the sentence start the model was trained with, as /score is"
    )
    max_tokens: int | None = Field(16, ge=0, description="words to generate; 0 scores the prompt only (with echo)")
    echo: bool = Field(False, description="return the prompt's tokens (and their logprobs) before the completion")
    logprobs: int | None = Field(None, ge=0, description="per-token logprobs, with this many alternatives per token")
    temperature: float | None = Field(1.0, ge=0, le=100, description="0: greedy; otherwise sampling")
    top_p: float | None = Field(1.0, gt=0, le=1, description="nucleus sampling: the smallest set reaching this mass")
    seed: int | None = Field(None, description="the same seed gives the same sample")
    stop: str | list[str] | None = Field(None, description="up to 4 strings; the completion ends before the first")
    n: int = Field(1, ge=1, le=1, description="completions per prompt: 1")
    stream: bool | None = Field(False, description="server-sent events are not served: false only")
    user: str | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "ptb-cpu",
                    "prompt": "<eos> the stock market rose",
                    "max_tokens": 0,
                    "echo": True,
                    "logprobs": 3,
                },
                {"model": "ptb-cpu", "prompt": "the company said", "max_tokens": 12, "temperature": 0},
            ]
        },
    )


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = Field(description="where each token starts in `text`")
    token_logprobs: list[float | None] = Field(description="natural log; null for the first token of the prompt")
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None] = Field(
        description="the most probable tokens at each position and the token itself, from the same log-softmax"
    )


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: str | None = Field(None, description="the stop string that ended the completion, if one did")
    oov: list[str] = Field(
        default_factory=list, description="words of the prompt outside the vocabulary, read as <unk> (not OpenAI's)"
    )


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ptb-lm"
    root: str | None = None
    max_model_len: int | None = Field(None, description="tokens per prompt at most")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(_OpenAIRequest):
    model: str | None = None
    prompt: str = Field(max_length=HARD_MAX_CHARS, description="text, normalised as /score normalises it")
    add_special_tokens: bool = Field(False, description="true: prime with <eos> as /score does")
    return_token_strs: bool = Field(False, description="also the tokens as strings")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_OpenAIRequest):
    model: str | None = None
    tokens: list[int] = Field(max_length=HARD_MAX_ITEMS)


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    tokenizer_class: str = Field(description="how text becomes tokens: the service's normaliser")
    eos_token: str
    eos_token_id: int
    bos_token: str | None = Field(description="the sentence start: <eos>, as in training")
    bos_token_id: int | None
    unk_token: str
    unk_token_id: int
    pad_token: str | None = None
    vocab_size: int
    model_max_length: int
    add_bos_token: bool = False
    add_eos_token: bool = False


@dataclass
class TokenResult:
    """One token of a choice: its text, its logprob (None for the first), and the most probable alternatives at
    its position, all read from the same log-softmax row."""

    token: str
    logprob: float | None
    top: dict[str, float] | None


def top_alternatives(
    values: Sequence[float], ids: Sequence[int], itos: Sequence[str], token: str, logprob: float
) -> dict[str, float]:
    """`{word: logprob}` of the k most probable words (values, ids: from topk of the row) and the token itself."""
    top = {itos[i]: v for v, i in zip(values, ids, strict=True)}
    top.setdefault(token, logprob)
    return top


def assemble_logprobs(results: Sequence[TokenResult], text: str) -> CompletionLogProbs:
    """The `logprobs` object of a choice whose `text` is its tokens separated by single spaces (a token that is
    not in the text, such as a final <eos>, is placed at its end)."""
    offsets, position = [], 0
    for r in results:
        offsets.append(min(position, len(text)))
        position += len(r.token) + 1
    return CompletionLogProbs(
        text_offset=offsets,
        token_logprobs=[r.logprob for r in results],
        tokens=[r.token for r in results],
        top_logprobs=[r.top for r in results],
    )


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """The request's `stop` as a tuple (a single string is one stop string)."""
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def prompts_of(prompt: Prompt) -> list[str | list[int]]:
    """The request's prompts, each a string or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]
