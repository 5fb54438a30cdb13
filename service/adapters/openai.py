"""The OpenAI-compatible API, as vLLM's OpenAI server speaks it: `POST /v1/completions` (scoring with echo and
logprobs, and generation), `GET /v1/models`, and the tokenizer routes through which lm-eval finds a server-side
tokenizer (`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`).

A second adapter over the same engine and runner as the native API: a prompt's logprobs are a ScoreJob (with
the top alternatives read from the same log-softmax row), and each generated word of each stream is one StepJob
from the stream's carried LSTM state, so concurrent streams advance together, batched by the engine.

The numbers are /score's and /next-word's: a prompt is read from the sentence start (`<eos>`), as /score reads a
sentence; a prompt that starts with `<eos>` (text or id) has that `<eos>` as its sentence start, so its first
word's logprob is reported; otherwise the first token's logprob is null, as OpenAI's convention has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import State

from lm.encoding import SentenceEncoder
from lm.generate import GenerationStream, SamplingParams
from lm.scoring import TokenScores
from lm.vocab import EOS
from service.errors import ERROR_RESPONSES, APIError
from service.http import Deadline, Ready, json_body, run_jobs
from service.limits import Limits, limit_exceeded
from service.middleware import KEYED, GuardedRoute
from service.openai_protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    TokenResult,
    UsageInfo,
    assemble_logprobs,
    prompts_of,
    stop_strings,
    top_alternatives,
)
from service.runner import ScoreJob, StepJob, StepResult
from service.schemas import ErrorResponse

# Every route here is behind the API key (when the server has one): each declares KEYED.
router = APIRouter(
    tags=["openai"],
    responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse, "description": "the request names another model"}},
    route_class=GuardedRoute,
)
MAX_STOP_STRINGS = 4


@dataclass
class Prompt:
    """One prompt, ready for the model: what it reads and what is reported."""

    context: list[int]  # the ids the model reads: the sentence start <eos> first
    tokens: list[str]  # the prompt's tokens as reported (a leading <eos> included where the prompt had one)
    oov: list[str]
    primed: bool  # the prompt began with <eos> (so its first word has a logprob)


def encode_prompt(encoder: SentenceEncoder, limits: Limits, prompt: str | list[int]) -> Prompt:
    """A prompt (text, or token ids) within the limits; 422 for an id outside the vocabulary."""
    vocab = encoder.vocab
    if isinstance(prompt, str):
        encoded = encoder.encode(limits.words(encoder, prompt, "prompt"))  # normalised as /score's text
        ids, tokens, oov = encoded.ids[1:], encoded.tokens, encoded.oov
    else:
        bad = [i for i in prompt if not 0 <= i < len(vocab)]
        if bad:
            raise APIError(
                422,
                "invalid_request",
                f"prompt: token id {bad[0]} is outside the vocabulary (0 .. {len(vocab) - 1})",
            )
        limits.check_tokens(prompt, "prompt")
        ids, tokens, oov = list(prompt), vocab.decode(prompt), []
    primed = bool(ids) and ids[0] == vocab.eos_id
    return Prompt(ids if primed else [vocab.eos_id, *ids], tokens, oov, primed)


def check_completion(body: CompletionRequest, limits: Limits, prompts: Sequence[object]) -> SamplingParams:
    """The request's sampling parameters, or a 4xx naming what is wrong with them."""
    if body.stream:
        raise APIError(422, "invalid_request", "stream: streamed answers are not served; send stream: false")
    if body.logprobs is not None and body.logprobs > limits.max_top_k:
        raise limit_exceeded(
            "max_top_k", f"logprobs {body.logprobs}; at most {limits.max_top_k}", body.logprobs, limits.max_top_k
        )
    stop = stop_strings(body.stop)
    if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
        raise APIError(422, "invalid_request", f"stop: at most {MAX_STOP_STRINGS} strings, none of them empty")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > limits.max_new_tokens:
        raise limit_exceeded(
            "max_new_tokens",
            f"max_tokens {max_tokens}; at most {limits.max_new_tokens}",
            max_tokens,
            limits.max_new_tokens,
        )
    limits.check_count(len(prompts), "prompts")
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=body.seed, stop=stop)


def served_model(state: State, asked: str | None) -> str:
    """The served model's id; 404 `model_not_found` for a request that names another model."""
    name = state.ckpt.name
    if asked is not None and asked != name:
        raise APIError(404, "model_not_found", f"the model `{asked}` does not exist; this server serves `{name}`")
    return name


@router.post(
    "/v1/completions", response_model=CompletionResponse, response_model_exclude_none=False, openapi_extra=KEYED
)
async def completions(body: CompletionRequest, request: Request, state: Ready) -> Response:
    """OpenAI's text completion: the prompt's logprobs (`echo` with `logprobs`, `max_tokens: 0` scores only) and
    generated words (greedy at temperature 0, else temperature and top_p sampling, reproducible with `seed`).

    As /score's: the request's CPU work (normalising the prompts, each generation step's sampling, building the
    answer) runs off the event loop, and all of it within the request's deadline (504 past it)."""
    name = served_model(state, body.model)
    raw = prompts_of(body.prompt)
    params = check_completion(body, state.limits, raw)
    await state.engine.admit(len(raw))
    deadline = Deadline(request)
    encode = state.limits.tallied(lambda p: encode_prompt(state.encoder, state.limits, p), lambda p: len(p.context))
    prompts = await deadline.map(encode, raw)
    k = body.logprobs
    scores: list[TokenScores | None] = [None] * len(prompts)
    if body.echo and k is not None:
        scored = [i for i, p in enumerate(prompts) if len(p.context) > 1]
        results = await run_jobs(request, [ScoreJob(prompts[i].context, top=k) for i in scored], deadline)
        for i, r in zip(scored, results, strict=True):
            scores[i] = r
    streams = await generate(request, prompts, params, keep_dists=k is not None, deadline=deadline)
    itos = state.encoder.vocab.itos

    def answer() -> Response:
        choices = [
            choice(i, p, s, g, body.echo, k, itos)
            for i, (p, s, g) in enumerate(zip(prompts, scores, streams, strict=True))
        ]
        prompt_tokens = sum(len(p.tokens) for p in prompts)
        completion_tokens = sum(len(g.ids) for g in streams)
        state.metrics.tokens_scored.labels("/v1/completions").inc(prompt_tokens + completion_tokens)
        usage = UsageInfo(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return json_body(CompletionResponse(model=name, choices=choices, usage=usage))

    return await deadline.off_loop(answer)


async def generate(
    request: Request,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    keep_dists: bool,
    deadline: Deadline,
) -> list[GenerationStream]:
    """One stream per prompt; every unfinished stream takes one engine step per generated word, from its state
    (each step's sampling off the event loop, within the request's deadline)."""
    vocab = request.app.state.encoder.vocab
    streams = [GenerationStream(params, vocab, keep_dists=keep_dists) for _ in prompts]
    jobs = {i: StepJob(p.context) for i, p in enumerate(prompts) if not streams[i].finished}
    while jobs:
        results: list[StepResult] = await run_jobs(request, list(jobs.values()), deadline)

        def advance(running: dict[int, StepJob] = jobs, results: list[StepResult] = results) -> dict[int, StepJob]:
            following = {}
            for i, r in zip(running, results, strict=True):
                token = streams[i].advance(r.logdist)
                if token is not None:
                    following[i] = StepJob([token], r.state)
            return following

        jobs = await deadline.off_loop(advance)
    return streams


def choice(
    index: int,
    prompt: Prompt,
    scores: TokenScores | None,
    stream: GenerationStream,
    echo: bool,
    k: int | None,
    itos: Sequence[str],
) -> CompletionChoice:
    """One choice: the prompt's tokens first (with echo), then the generated ones; logprobs if asked for."""
    results: list[TokenResult] = []
    if echo:
        # scores.logprobs[j] predicts context[j + 1]; the reported tokens start at context[0] when the prompt
        # began with <eos>, at context[1] otherwise (and that first one's logprob is null either way).
        offset = 0 if prompt.primed else 1
        # As Python numbers once (one conversion each, not one tensor op per token).
        values = scores.logprobs.tolist() if scores is not None else []
        top_values = top_ids = None  # logprobs 0 (or no scores): no alternatives
        if k and scores is not None and scores.top_logprobs is not None and scores.top_ids is not None:
            top_values, top_ids = scores.top_logprobs.tolist(), scores.top_ids.tolist()
        for j, token in enumerate(prompt.tokens):
            at = j - 1 + offset  # the row of scores that predicts this token
            if j == 0 or scores is None:
                results.append(TokenResult(token, None, None))
                continue
            value = values[at]
            top = top_alternatives(
                top_values[at] if top_values is not None else [],
                top_ids[at] if top_ids is not None else [],
                itos,
                token,
                value,
            )
            results.append(TokenResult(token, value, top))
    for j, (token_id, value) in enumerate(zip(stream.ids, stream.logprobs, strict=True)):
        token = itos[token_id]
        top = None
        if k is not None:
            values, ids = stream.dists[j].topk(k)
            top = top_alternatives(values.tolist(), ids.tolist(), itos, token, value)
        results.append(TokenResult(token, value, top))
    parts = [*prompt.tokens] if echo else []
    text = " ".join([*parts, stream.text] if stream.text else parts)
    return CompletionChoice(
        index=index,
        text=text,
        logprobs=assemble_logprobs(results, text) if k is not None else None,
        finish_reason=stream.finish_reason or "length",
        stop_reason=stream.stop_reason,
        oov=prompt.oov,
    )


@router.get("/v1/models", response_model=ModelList, openapi_extra=KEYED)
async def models(state: Ready) -> ModelList:
    """The served checkpoint, as OpenAI's model list; `max_model_len`: tokens per prompt at most."""
    card = ModelCard(id=state.ckpt.name, root=str(state.ckpt.path), max_model_len=state.limits.max_tokens)
    return ModelList(data=[card])


@router.get("/tokenizer_info", response_model=TokenizerInfo, openapi_extra=KEYED)
async def tokenizer_info(state: Ready) -> TokenizerInfo:
    """What lm-eval's remote tokenizer reads: the special tokens (`<eos>` ends a sentence and starts the next)."""
    vocab = state.encoder.vocab
    return TokenizerInfo(
        tokenizer_class=type(state.encoder.tokenizer).__name__,  # the checkpoint's own (lm.tokenizers)
        eos_token=EOS,
        eos_token_id=vocab.eos_id,
        bos_token=EOS,
        bos_token_id=vocab.eos_id,
        unk_token=vocab.itos[vocab.unk_id],
        unk_token_id=vocab.unk_id,
        vocab_size=len(vocab),
        model_max_length=state.limits.max_tokens,
    )


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True, openapi_extra=KEYED)
async def tokenize(body: TokenizeRequest, request: Request, state: Ready) -> TokenizeResponse:
    """The prompt's token ids, normalised as /score normalises (a word outside the vocabulary is `<unk>`'s id);
    `<eos>` is added in front only with add_special_tokens. The normalising runs off the event loop, within the
    request's deadline."""
    served_model(state, body.model)

    def work() -> TokenizeResponse:
        encoded = state.encoder.encode(state.limits.words(state.encoder, body.prompt, "prompt"))
        ids = encoded.ids if body.add_special_tokens else encoded.ids[1:]
        strs = state.encoder.vocab.decode(ids) if body.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=state.limits.max_tokens, tokens=ids, token_strs=strs)

    return await Deadline(request).off_loop(work)


@router.post("/detokenize", response_model=DetokenizeResponse, openapi_extra=KEYED)
async def detokenize(body: DetokenizeRequest, state: Ready) -> DetokenizeResponse:
    """The tokens' words, separated by spaces; 422 for an id outside the vocabulary."""
    served_model(state, body.model)
    vocab = state.encoder.vocab
    bad = [i for i in body.tokens if not 0 <= i < len(vocab)]
    if bad:
        raise APIError(422, "invalid_request", f"tokens: id {bad[0]} is outside the vocabulary (0 .. {len(vocab) - 1})")
    return DetokenizeResponse(prompt=" ".join(vocab.decode(body.tokens)))
