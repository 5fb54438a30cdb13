"""The native API: `/score` and `/next-word`. Request in -> encoded sentences -> runner jobs -> the engine ->
response out, the request's CPU work (encoding, building the answer) in a worker thread, all of it within the
request's deadline; the definitions of the numbers (priming, log10, perplexity, ranks) are in docs/architecture.md."""

from __future__ import annotations

import math

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response
from torch import Tensor

from lm.encoding import Encoded, SentenceEncoder
from lm.scoring import LN10, TokenScores, perplexity
from service.errors import ERROR_RESPONSES, APIError
from service.http import Deadline, Ready, json_body, run_jobs
from service.limits import Limits
from service.middleware import KEYED, GuardedRoute
from service.runner import NextJob, ScoreJob
from service.schemas import (
    NextWordRequest,
    NextWordResponse,
    NextWordResult,
    ScoreRequest,
    ScoreResponse,
    SentenceScore,
    WordProb,
)

# A request at most this large is prepared and answered on the event loop (`small`): a few sentences or prefixes,
# tens of microseconds of work; anything larger goes to a worker thread, so the loop stays free for other requests.
INLINE_CHARS = 2048
INLINE_ITEMS = 256

router = APIRouter(tags=["scoring"], responses=ERROR_RESPONSES, route_class=GuardedRoute)


@router.post("/score", response_model=ScoreResponse, openapi_extra=KEYED)
async def score(body: ScoreRequest, request: Request, state: Ready) -> Response:
    """Log-probability and perplexity of each sentence (`<eos>`-primed; natural log unless log10)."""
    texts = [body.text] if body.text is not None else body.sentences
    state.limits.check_count(len(texts), "sentences")
    await state.engine.admit(len(texts))
    deadline = Deadline(request)
    inline = small(texts, len(texts))
    encode = state.limits.tallied(
        lambda t: encode_sentence(state.encoder, state.limits, t, body.normalize, body.add_eos), lambda e: len(e.ids)
    )
    encoded = await deadline.map(encode, texts, inline=inline)
    scores = await run_jobs(request, [ScoreJob(e.ids, ranks=body.per_token) for e in encoded], deadline)

    def answer() -> Response:
        results = [score_result(t, e, s, body.per_token) for t, e, s in zip(texts, encoded, scores, strict=True)]
        m = state.metrics
        m.tokens_scored.labels("/score").inc(sum(r.num_tokens for r in results))
        m.oov_tokens.inc(sum(r.num_oov for r in results))
        m.nll.inc(-sum(r.logprob for r in results))
        return json_body(ScoreResponse(model=state.ckpt.name, results=results))

    return await deadline.off_loop(answer, inline=inline)


@router.post("/next-word", response_model=NextWordResponse, openapi_extra=KEYED)
async def next_word(body: NextWordRequest, request: Request, state: Ready) -> Response:
    """The most probable next words after each prefix (empty = sentence start), and the candidates' odds."""
    # The default top_k serves under any max_top_k; only a top_k the client asked for can exceed it.
    top_k = state.limits.top_k(body.top_k, asked="top_k" in body.model_fields_set)
    state.limits.check_candidates(body.candidates)
    texts = [body.prefix] if body.prefix is not None else body.prefixes
    state.limits.check_count(len(texts), "prefixes")
    state.limits.check_answer_words(len(texts), top_k, len(body.candidates or ()))
    await state.engine.admit(len(texts))
    deadline = Deadline(request)
    inline = small(texts, len(texts) * (top_k + len(body.candidates or ())))
    encode = state.limits.tallied(
        lambda t: encode_prefix(state.encoder, state.limits, t, body.normalize), lambda e: len(e.ids)
    )
    encoded = await deadline.map(encode, texts, inline=inline)
    dists = await run_jobs(request, [NextJob(e.ids) for e in encoded], deadline)
    state.metrics.tokens_scored.labels("/next-word").inc(len(encoded))

    def answer() -> Response:
        results = [
            next_word_result(t, e, d, top_k, body.candidates, body.normalize, state.encoder)
            for t, e, d in zip(texts, encoded, dists, strict=True)
        ]
        return json_body(NextWordResponse(model=state.ckpt.name, results=results))

    return await deadline.off_loop(answer, inline=inline)


def small(texts: list[str], answer_items: int) -> bool:
    """Whether a request's own CPU work (normalising its texts, building an answer of `answer_items` numbers or
    words) is small enough to run on the event loop: a hand-off to a worker thread and back costs more than it
    (and, on a CPU the forward pass keeps busy, waits for the GIL twice)."""
    return answer_items <= INLINE_ITEMS and sum(map(len, texts)) <= INLINE_CHARS


def encode_sentence(encoder: SentenceEncoder, limits: Limits, text: str, normalize: bool, add_eos: bool) -> Encoded:
    """A sentence to score, within the limits; 422 `empty_sentence` when there is nothing to predict."""
    words = limits.words(encoder, text, "sentence", normalize)
    if not words and not add_eos:
        raise APIError(
            422, "empty_sentence", "nothing to score: the sentence has no words and add_eos is false", {"text": text}
        )
    return encoder.encode(words, add_eos)


def encode_prefix(encoder: SentenceEncoder, limits: Limits, text: str, normalize: bool) -> Encoded:
    """A prefix whose next word is wanted, within the limits (empty: the start of a sentence)."""
    return encoder.encode(limits.words(encoder, text, "prefix", normalize))


def score_result(text: str, e: Encoded, scores: TokenScores, per_token: bool) -> SentenceScore:
    """The body of one scored sentence: the sum of its predictions' log-probabilities, in nats and log10, and
    the perplexity exp(-sum / predictions)."""
    logprobs = scores.logprobs
    total = scores.total
    n = logprobs.numel()
    return SentenceScore(
        text=text,
        tokens=e.tokens,
        token_logprobs=[float(x) for x in logprobs.tolist()] if per_token else None,
        token_ranks=scores.ranks.tolist() if per_token and scores.ranks is not None else None,
        oov=e.oov,
        num_tokens=n,
        num_oov=len(e.oov),
        logprob=total,
        log10prob=total / LN10,
        perplexity=perplexity(total, n),
    )


def next_word_result(
    text: str,
    e: Encoded,
    logdist: Tensor,
    top_k: int,
    candidates: list[str] | None,
    normalize: bool,
    encoder: SentenceEncoder,
) -> NextWordResult:
    """The body of one prefix: its top_k next words, and each candidate's probability and rank (1 = the most
    probable); a candidate that is not exactly one vocabulary token once normalised is reported `oov`."""
    itos = encoder.vocab.itos
    values, indices = torch.topk(logdist, min(top_k, logdist.numel()))
    top = [
        WordProb(word=itos[i], prob=math.exp(v), logprob=v, rank=r + 1)
        for r, (v, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True))
    ]
    cand = None
    if candidates is not None:
        cand = []
        for word in candidates:
            token = encoder.token(word, normalize)
            if token is None:
                cand.append(WordProb(word=word, prob=None, logprob=None, rank=None, oov=True))
                continue
            v = logdist[encoder.vocab.stoi[token]]
            rank = int((logdist > v).sum()) + 1
            cand.append(WordProb(word=token, prob=math.exp(float(v)), logprob=float(v), rank=rank))
    return NextWordResult(prefix=text, tokens=e.tokens, oov=e.oov, top_k=top, candidates=cand)
