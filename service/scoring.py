"""From requests to token ids and back: normalisation, limits, the model runner, and the response bodies."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lm.checkpoint import Checkpoint
from lm.model import resolve_device
from lm.normalize import PTBNormalizer, whitespace_tokens
from lm.scoring import TokenScores, final_states, next_from_states, score_tokens
from lm.vocab import EOS, UNK
from service.engine import WorkItem
from service.errors import APIError
from service.metrics import Metrics
from service.prefix_cache import PrefixStateCache, prefix_hashes
from service.schemas import NextWordResult, SentenceScore, WordProb
from service.settings import Settings

LN10 = math.log(10)
log = logging.getLogger("service.scoring")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or infinity: reported as an error, never returned as a number."""


class ModelRunner:
    """The checkpoint on its device and dtype; `run(items)` is the engine's forward pass."""

    def __init__(self, ckpt: Checkpoint, settings: Settings, metrics: Metrics | None = None) -> None:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.ckpt = ckpt
        self.vocab = ckpt.vocab
        self.device = resolve_device(settings.device)
        self.dtype = DTYPES[settings.dtype]
        self.dtype_name = settings.dtype
        self.model = ckpt.model.to(self.device, self.dtype).eval()
        self.max_chunk_tokens = settings.max_chunk_tokens
        self.prefix_cache = PrefixStateCache(settings.prefix_cache_entries)
        self.metrics = metrics

    def run(self, items: list[WorkItem]) -> list[TokenScores | Tensor]:
        """Scores (ranks too where the item asks) for "score" items, the next-token log-distribution (V,) for "next"
        items.

        Out of device memory, the batch is split in halves and each half retried, down to single items.
        """
        try:
            return self._run(items)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(items) // 2
            log.warning(
                "out of memory on a batch of %d sequences: retrying as %d + %d", len(items), half, len(items) - half
            )
            return self.run(items[:half]) + self.run(items[half:])

    def _run(self, items: list[WorkItem]) -> list[TokenScores | Tensor]:
        results: list[TokenScores | Tensor | None] = [None] * len(items)
        score_idx = [i for i, it in enumerate(items) if it.kind == "score"]
        if score_idx:
            ranks = any(items[i].ranks for i in score_idx)
            scores = score_tokens(self.model, [items[i].ids for i in score_idx], self.max_chunk_tokens, ranks=ranks)
            for i, sc in zip(score_idx, scores, strict=True):
                results[i] = sc if items[i].ranks else TokenScores(sc.logprobs)
        next_idx = [i for i, it in enumerate(items) if it.kind == "next"]
        if next_idx:
            dists = self._next([items[i].ids for i in next_idx])
            for i, dist in zip(next_idx, dists, strict=True):
                results[i] = dist
        for r in results:
            values = r.logprobs if isinstance(r, TokenScores) else r
            if values is not None and not torch.isfinite(values).all():
                raise NonFiniteOutputError("the model produced a non-finite log-probability")
        return results  # type: ignore[return-value]

    def _next(self, sequences: list[list[int]]) -> Tensor:
        """Next-token log-distributions (B, V); each prefix starts from the longest cached prefix's state."""
        cache = self.prefix_cache
        hashes = [prefix_hashes(ids) if cache.max_entries else None for ids in sequences]
        found = [cache.longest(ids, h) for ids, h in zip(sequences, hashes, strict=True)]
        h, c = final_states(
            self.model,
            [ids[n:] for ids, (n, _) in zip(sequences, found, strict=True)],
            [state for _, state in found],
            self.max_chunk_tokens,
        )
        for i, ids in enumerate(sequences):
            cache.put(ids, (h[:, i], c[:, i]), hashes[i])
        if self.metrics is not None and cache.max_entries:
            m = self.metrics
            hits = sum(1 for n, _ in found if n)
            m.prefix_cache_lookups.labels("hit").inc(hits)
            m.prefix_cache_lookups.labels("miss").inc(len(found) - hits)
            m.prefix_cache_tokens_reused.inc(sum(n for n, _ in found))
            m.prefix_cache_entries.set(len(cache))
        return next_from_states(self.model, h)

    def warmup(self) -> None:
        """One pass of each kind, so the first request does not pay for lazy initialisation."""
        eos = self.vocab.eos_id
        score_tokens(self.model, [[eos, eos, eos]], self.max_chunk_tokens, ranks=True)
        h, _ = final_states(self.model, [[eos]], max_chunk_tokens=self.max_chunk_tokens)
        next_from_states(self.model, h)


@dataclass
class Prepared:
    """One sentence or prefix, ready for the model."""

    text: str
    tokens: list[str]  # as the model sees them (OOVs as <unk>), after the priming <eos>
    oov: list[str]
    ids: list[int]  # priming <eos> first


class Preparer:
    """Normalises text and enforces the per-sentence limits before anything is queued."""

    def __init__(self, ckpt: Checkpoint, settings: Settings) -> None:
        self.vocab = ckpt.vocab
        self.normalizer = PTBNormalizer(ckpt.vocab)
        self.settings = settings

    def check_count(self, n: int, what: str) -> None:
        limit = self.settings.max_sentences
        if n > limit:
            raise limit_error("max_sentences", f"{n} {what} in one request; at most {limit}", n, limit)
        if n == 0:
            raise APIError(422, "invalid_request", f"`{what}` is empty: give at least one")

    def words(self, text: str, normalize: bool, what: str) -> list[str]:
        limit = self.settings.max_chars
        if len(text) > limit:
            raise limit_error("max_chars", f"a {what} of {len(text):,} characters; at most {limit:,}", len(text), limit)
        if "\x00" in text:
            raise APIError(422, "invalid_request", f"the {what} contains a NUL character")
        words = self.normalizer(text) if normalize else whitespace_tokens(text)
        if len(words) > self.settings.max_tokens:
            raise limit_error(
                "max_tokens",
                f"a {what} of {len(words):,} tokens; at most {self.settings.max_tokens:,}",
                len(words),
                self.settings.max_tokens,
            )
        return words

    def sentence(self, text: str, normalize: bool, add_eos: bool) -> Prepared:
        words = self.words(text, normalize, "sentence")
        if not words and not add_eos:
            raise APIError(
                422,
                "empty_sentence",
                "nothing to score: the sentence has no words and add_eos is false",
                {"text": text},
            )
        oov = [w for w in words if w not in self.vocab]
        tokens = [w if w in self.vocab else UNK for w in words] + ([EOS] if add_eos else [])
        return Prepared(text, tokens, oov, [self.vocab.eos_id, *self.vocab.encode(tokens)])

    def prefix(self, text: str, normalize: bool) -> Prepared:
        words = self.words(text, normalize, "prefix")
        oov = [w for w in words if w not in self.vocab]
        tokens = [w if w in self.vocab else UNK for w in words]
        return Prepared(text, tokens, oov, [self.vocab.eos_id, *self.vocab.encode(tokens)])


def limit_error(limit: str, message: str, value: int, maximum: int) -> APIError:
    return APIError(
        422 if limit != "max_body_bytes" else 413,
        "limit_exceeded",
        message,
        {"limit": limit, "value": value, "max": maximum},
    )


def score_result(p: Prepared, scores: TokenScores, per_token: bool) -> SentenceScore:
    logprobs = scores.logprobs
    lp = logprobs.double()
    total = float(lp.sum())
    n = lp.numel()
    return SentenceScore(
        text=p.text,
        tokens=p.tokens,
        token_logprobs=[float(x) for x in logprobs.tolist()] if per_token else None,
        token_ranks=scores.ranks.tolist() if per_token and scores.ranks is not None else None,
        oov=p.oov,
        num_tokens=n,
        num_oov=len(p.oov),
        logprob=total,
        log10prob=total / LN10,
        perplexity=math.exp(-total / n),
    )


def next_word_result(
    p: Prepared, logdist: Tensor, top_k: int, candidates: list[str] | None, normalize: bool, vocab
) -> NextWordResult:
    k = min(top_k, logdist.numel())
    values, indices = torch.topk(logdist, k)
    top = [
        WordProb(word=vocab.itos[i], prob=math.exp(v), logprob=v, rank=r + 1)
        for r, (v, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True))
    ]
    cand = None
    if candidates is not None:
        cand = []
        for word in candidates:
            key = word.lower() if normalize and word != "N" else word
            if key not in vocab:
                cand.append(WordProb(word=word, prob=None, logprob=None, rank=None, oov=True))
                continue
            v = logdist[vocab.stoi[key]]
            rank = int((logdist > v).sum()) + 1
            cand.append(WordProb(word=key, prob=math.exp(float(v)), logprob=float(v), rank=rank))
    return NextWordResult(prefix=p.text, tokens=p.tokens, oov=p.oov, top_k=top, candidates=cand)
