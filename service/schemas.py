"""Request and response bodies (pydantic v2). Requests are strict: unknown fields and wrong types are 422.

Static bounds here are hard ceilings; the serving limits (settings) are checked by `service.limits` before
anything is queued, so that each can be tuned without a code change and names itself when exceeded.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HARD_MAX_ITEMS = 100_000
HARD_MAX_CHARS = 10_000_000


def lone_surrogate(value: Any) -> tuple[tuple[int | str, ...], int, str] | None:
    """The first lone surrogate (JSON's `"\\ud800"`) anywhere in a parsed JSON value, strings, object keys and
    nested lists alike: (the path to its string, its position there, the character); None when there is none.
    Iterative, so that no nesting depth can exhaust the stack."""
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as e:
                    return path, e.start, item[e.start]
        elif isinstance(item, list | tuple):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            for key, v in reversed(list(item.items())):
                stack.append(((*path, key), v))
                stack.append(((*path, key), key))
    return None


class TextRequest(BaseModel):
    """A request body whose every string is Unicode text: a lone surrogate in any field, however deep in lists
    or objects, is refused as that field's 422, before anything runs (it could not be written into an answer)."""

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        found = lone_surrogate(value)
        if found is not None:
            path, position, char = found
            where = "".join(f"item {p}, " if i == 0 else f"[{p!r}] " for i, p in enumerate(path))
            raise ValueError(
                f"{where}character {position} is a lone surrogate (U+{ord(char):04X}), not Unicode "
                "text: encode the text as UTF-8, or escape it as a surrogate pair"
            )
        return value


class _Request(TextRequest):
    model_config = ConfigDict(strict=True, extra="forbid")


class ScoreRequest(_Request):
    text: str | None = Field(None, max_length=HARD_MAX_CHARS, description="one sentence to score")
    sentences: list[str] | None = Field(
        None, max_length=HARD_MAX_ITEMS, description="several sentences, each scored on its own (one result each)"
    )
    normalize: bool = Field(
        True, description="apply the model's tokenizer (PTB normalisation for a PTB model); false: split on whitespace"
    )
    add_eos: bool = Field(True, description="also predict the end of the sentence (<eos>)")
    per_token: bool = Field(False, description="return each token's log-probability")

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "The company said profits rose 5% to $30 million."},
                {"sentences": ["the stock market rose", "the stock market sang"], "per_token": True},
            ]
        },
    )

    @model_validator(mode="after")
    def _one_source(self) -> ScoreRequest:
        if (self.text is None) == (self.sentences is None):
            raise ValueError("give exactly one of `text` or `sentences`")
        return self


class NextWordRequest(_Request):
    prefix: str | None = Field(None, max_length=HARD_MAX_CHARS, description="text so far; empty = sentence start")
    prefixes: list[str] | None = Field(None, max_length=HARD_MAX_ITEMS, description="several prefixes at once")
    top_k: int = Field(10, ge=1, description="how many of the most probable next words (at most max_top_k)")
    candidates: list[str] | None = Field(
        None, max_length=HARD_MAX_ITEMS, description="words whose probability and rank are wanted"
    )
    normalize: bool = Field(True, description="apply the model's tokenizer to the prefix and the candidates")

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prefix": "the stock market", "top_k": 5},
                {"prefix": "", "top_k": 3, "candidates": ["the", "but", "zebra"]},
            ]
        },
    )

    @model_validator(mode="after")
    def _one_source(self) -> NextWordRequest:
        if (self.prefix is None) == (self.prefixes is None):
            raise ValueError("give exactly one of `prefix` or `prefixes`")
        return self


class SentenceScore(BaseModel):
    text: str = Field(description="the sentence as sent")
    tokens: list[str] = Field(description="the tokens as the model saw them, OOVs as <unk>, the final <eos> included")
    token_logprobs: list[float] | None = Field(
        None, description="natural-log probability of each token in `tokens` (only with per_token)"
    )
    token_ranks: list[int] | None = Field(
        None, description="rank of each token among the vocabulary at its position, 1 = most probable (per_token)"
    )
    oov: list[str] = Field(description="input words (after normalisation) that were scored as <unk>")
    num_tokens: int = Field(description="number of predictions (len(tokens))")
    num_oov: int
    logprob: float = Field(description="sum of the predictions' log-probabilities, natural log (nats)")
    log10prob: float = Field(description="the same sum in log base 10, as KenLM and SRILM report it")
    perplexity: float = Field(description="exp(-logprob / num_tokens)")


class ScoreResponse(BaseModel):
    model: str
    results: list[SentenceScore]


class WordProb(BaseModel):
    word: str
    prob: float | None = Field(description="probability of this word next (None for a word outside the vocabulary)")
    logprob: float | None = Field(description="natural log of prob")
    rank: int | None = Field(description="1 = the most probable next word")
    oov: bool = Field(False, description="true when the word is not in the vocabulary")


class NextWordResult(BaseModel):
    prefix: str
    tokens: list[str] = Field(description="the prefix as the model saw it, after the priming <eos>")
    oov: list[str]
    top_k: list[WordProb] = Field(description="most probable next words, most probable first")
    candidates: list[WordProb] | None = None


class NextWordResponse(BaseModel):
    model: str
    results: list[NextWordResult]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable")
    message: str = Field(description="for people")
    details: object | None = None
    type: str = Field(description="OpenAI's error type: invalid_request_error, authentication_error, ...")
    param: str | None = Field(None, description="the request field at fault, where one is")


class ErrorResponse(BaseModel):
    error: ErrorDetail
