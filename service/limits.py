"""The serving limits: every request bound the settings set is checked here, and documented from here into the
OpenAPI schema.

Each check raises a 422 `limit_exceeded` naming the limit, its value and its maximum, before any work is
queued; the body-size limit (413) is the middleware's, with the same details. The schemas' static bounds are
hard ceilings only; the limits below can be tuned without a code change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lm.encoding import SentenceEncoder
from service.errors import APIError
from service.settings import Settings

T = TypeVar("T")
E = TypeVar("E")


def limit_exceeded(limit: str, message: str, value: int, maximum: int, status: int = 422) -> APIError:
    """The error of a limit passed: `details` says which limit, the value sent and the maximum."""
    return APIError(status, "limit_exceeded", message, {"limit": limit, "value": value, "max": maximum})


class Limits:
    """The request limits of `Settings` (max_sentences, max_chars, max_tokens, max_request_tokens, max_top_k,
    max_candidates, max_body_bytes, max_answer_words) and their checks."""

    def __init__(self, settings: Settings) -> None:
        self.max_sentences = settings.max_sentences
        self.max_chars = settings.max_chars
        self.max_tokens = settings.max_tokens
        self.max_request_tokens = settings.max_request_tokens
        self.max_top_k = settings.max_top_k
        self.max_new_tokens = settings.max_new_tokens
        self.max_candidates = settings.max_candidates
        self.max_body_bytes = settings.max_body_bytes
        self.max_answer_words = settings.max_answer_words

    def check_count(self, n: int, what: str) -> None:
        """Sentences (or prefixes) in one request: at least one, at most max_sentences."""
        if n > self.max_sentences:
            raise limit_exceeded(
                "max_sentences", f"{n} {what} in one request; at most {self.max_sentences}", n, self.max_sentences
            )
        if n == 0:
            raise APIError(422, "invalid_request", f"`{what}` is empty: give at least one")

    def check_text(self, text: str, what: str) -> None:
        """One sentence or prefix as sent: at most max_chars characters, no NUL."""
        if len(text) > self.max_chars:
            raise limit_exceeded(
                "max_chars",
                f"a {what} of {len(text):,} characters; at most {self.max_chars:,}",
                len(text),
                self.max_chars,
            )
        if "\x00" in text:
            raise APIError(422, "invalid_request", f"the {what} contains a NUL character")

    def check_tokens(self, words: Sequence[str], what: str) -> None:
        """One sentence or prefix after normalisation: at most max_tokens tokens."""
        if len(words) > self.max_tokens:
            raise limit_exceeded(
                "max_tokens",
                f"a {what} of {len(words):,} tokens; at most {self.max_tokens:,}",
                len(words),
                self.max_tokens,
            )

    def check_request_tokens(self, n: int, so_far: bool = False) -> None:
        """All the tokens one request sends to the model (`so_far`: those of the texts encoded so far): at most
        max_request_tokens."""
        if n > self.max_request_tokens:
            counted = f"{n:,} tokens in the first texts of one request" if so_far else f"{n:,} tokens in one request"
            raise limit_exceeded(
                "max_request_tokens",
                f"{counted}; at most {self.max_request_tokens:,}: split it into several requests",
                n,
                self.max_request_tokens,
            )

    def tallied(self, encode: Callable[[T], E], tokens: Callable[[E], int]) -> Callable[[T], E]:
        """`encode` for one request's texts, counting `tokens(result)` across its calls: 422 `max_request_tokens`
        as soon as they pass the limit, so that an oversize request stops costing CPU (and memory) there, not
        after all its texts are normalised. `run_jobs` checks the whole again before anything is queued."""
        total = 0

        def counted(item: T) -> E:
            nonlocal total
            result = encode(item)
            total += tokens(result)
            self.check_request_tokens(total, so_far=True)
            return result

        return counted

    def words(self, encoder: SentenceEncoder, text: str, what: str, normalize: bool = True) -> list[str]:
        """The words of one sentence, prefix or prompt as `encoder` splits it (`normalize`: the model's own
        tokenizer), the text and its words within the limits: every route's way from text to words."""
        self.check_text(text, what)
        words = encoder.split(text, normalize)
        self.check_tokens(words, what)
        return words

    def top_k(self, top_k: int, asked: bool) -> int:
        """The top_k to serve: a default one (not `asked`) is clamped to max_top_k; an asked one must fit it."""
        if not asked:
            return min(top_k, self.max_top_k)
        if top_k > self.max_top_k:
            raise limit_exceeded("max_top_k", f"top_k {top_k}; at most {self.max_top_k}", top_k, self.max_top_k)
        return top_k

    def check_candidates(self, candidates: Sequence[str] | None) -> None:
        """Next-word candidates in one request: at most max_candidates."""
        if candidates is not None and len(candidates) > self.max_candidates:
            n = len(candidates)
            raise limit_exceeded(
                "max_candidates", f"{n} candidates; at most {self.max_candidates}", n, self.max_candidates
            )

    def check_answer_words(self, prefixes: int, top_k: int, candidates: int) -> None:
        """The words a /next-word answer lists, prefixes x (top_k + candidates): at most max_answer_words, so
        that a few kilobytes of request cannot ask for megabytes of answer."""
        n = prefixes * (top_k + candidates)
        if n > self.max_answer_words:
            raise limit_exceeded(
                "max_answer_words",
                f"{prefixes} prefixes x (top_k {top_k} + {candidates} candidates) = {n:,} words in the answer; "
                f"at most {self.max_answer_words:,}: ask for fewer prefixes, a smaller top_k or fewer candidates",
                n,
                self.max_answer_words,
            )

    def body_too_large(self, size: int) -> APIError:
        """The 413 of a request body over max_body_bytes (the middleware checks it, before routing)."""
        return limit_exceeded(
            "max_body_bytes",
            f"request body of {size:,}+ bytes; at most {self.max_body_bytes:,}",
            size,
            self.max_body_bytes,
            status=413,
        )

    def document(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Write the limits into an OpenAPI schema (in place), so that it says what the server accepts."""
        models = schema["components"]["schemas"]
        score, nxt = models["ScoreRequest"]["properties"], models["NextWordRequest"]["properties"]
        chars, items = self.max_chars, self.max_sentences
        _bound(score["text"], maxLength=chars)
        _bound(score["sentences"], maxItems=items, item_max_length=chars)
        _bound(nxt["prefix"], maxLength=chars)
        _bound(nxt["prefixes"], maxItems=items, item_max_length=chars)
        _bound(nxt["top_k"], maximum=self.max_top_k)
        _bound(nxt["candidates"], maxItems=self.max_candidates, item_max_length=chars)
        if "CompletionRequest" in models:  # the OpenAI adapter's
            completion = models["CompletionRequest"]["properties"]
            _bound(completion["max_tokens"], maximum=self.max_new_tokens)
            _bound(completion["logprobs"], maximum=self.max_top_k)
        return schema


def _bound(prop: dict, **limits: int) -> None:
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("string", "array", "integer"):
            key = {"string": "maxLength", "array": "maxItems", "integer": "maximum"}[branch["type"]]
            branch[key] = limits[key]
            if branch["type"] == "array" and "item_max_length" in limits:
                branch["items"]["maxLength"] = limits["item_max_length"]
