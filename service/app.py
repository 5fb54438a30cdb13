"""The FastAPI application: `create_app(settings)` builds it; its lifespan loads the checkpoint, warms the model
up, starts the batching engine, and stops it cleanly.

    python -m service --model models/ptb-cpu --port 8000
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from lm.checkpoint import load_checkpoint
from service.engine import BatchingEngine, EngineStoppedError, QueueFullError
from service.errors import APIError, install_error_handlers
from service.metrics import CONTENT_TYPE, Metrics
from service.middleware import AuthMiddleware, BodyLimitMiddleware, RequestObserverMiddleware, endpoint_of
from service.schemas import ErrorResponse, NextWordRequest, NextWordResponse, ScoreRequest, ScoreResponse
from service.scoring import ModelRunner, Preparer, next_word_result, score_result
from service.settings import Settings

log = logging.getLogger("service")

STATIC_DIR = Path(__file__).parent / "static"
ERROR_RESPONSES = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "body not readable as JSON",
        401: "missing or wrong API key (when the server has one)",
        413: "body too large",
        422: "invalid request or a limit exceeded",
        429: "queue full: retry after Retry-After seconds",
        503: "not ready",
        500: "internal error (details in the server log)",
        504: "timed out",
    }.items()
}
REJECT_REASONS = {
    "client_closed": "client_closed",
    "queue_full": "queue_full",
    "timeout": "timeout",
    "limit_exceeded": "too_long",
    "unauthorized": "unauthorized",
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, ready for uvicorn; nothing is loaded until the lifespan starts."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ckpt = await asyncio.to_thread(load_checkpoint, settings.model)
        runner = ModelRunner(ckpt, settings, metrics)
        await asyncio.to_thread(runner.warmup)
        engine = BatchingEngine(
            runner.run,
            metrics,
            max_batch_sequences=settings.max_batch_sequences,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )
        await engine.start()
        app.state.ckpt, app.state.runner, app.state.engine = ckpt, runner, engine
        app.state.preparer = Preparer(ckpt, settings)
        metrics.model_info.labels(ckpt.name, str(runner.device), runner.dtype_name).set(1)
        app.state.ready = True
        _drain_on_sigterm(app, settings.drain_s)
        log.info(
            "serving %s (%s parameters) on %s as %s",
            ckpt.path,
            f"{ckpt.model.num_parameters():,}",
            runner.device,
            runner.dtype_name,
        )
        try:
            yield
        finally:
            app.state.ready = False
            await engine.stop()

    app = FastAPI(
        title="PTB LSTM language-model scoring service",
        version="0.1.0",
        description=(
            "Scores sentences and predicts next words with an LSTM language model of the Penn Treebank. "
            "All log-probabilities are natural logs unless the field says log10."
        ),
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics, app.state.ready, app.state.draining = settings, metrics, False, False

    def on_reject(request: Request, status: int, code: str) -> None:
        if 400 <= status < 500 or status in (503, 504):
            reason = REJECT_REASONS.get(code, "bad_request")
            metrics.rejected.labels(endpoint_of(request.scope), reason).inc()

    install_error_handlers(app, on_reject)
    # Outermost last: observe (metrics, request id, log) -> API key -> body size -> the app.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    if settings.api_key is not None:
        protected = {"/score", "/next-word", "/model"} | ({"/metrics"} if settings.metrics_require_key else set())
        app.add_middleware(
            AuthMiddleware, key=settings.api_key.get_secret_value(), protected=protected, metrics=metrics
        )
    app.add_middleware(RequestObserverMiddleware, metrics=metrics)

    def preparer(request: Request) -> Preparer:
        """The request preparer, once the lifespan has loaded the model (503 before, never a 500)."""
        if not request.app.state.ready:
            raise APIError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "1"})
        return request.app.state.preparer

    def busy(reason: str) -> APIError:
        return APIError(
            429,
            "queue_full",
            f"the server is busy ({reason}); retry later",
            None,
            {"Retry-After": str(settings.retry_after_s)},
        )

    async def admit(request: Request, n: int) -> None:
        """429, before any text is normalised, if n sequences cannot be queued now. Under overload a refusal
        must cost little and come slowly (`busy_delay_ms`), or refused clients retrying at once take the CPU
        the forward pass needs."""
        engine = request.app.state.engine
        if engine.running and not engine.has_room(n):
            reason = f"{engine.queue_size()} sequences queued, {n} more would pass {engine.max_queue}"
            await asyncio.sleep(settings.busy_delay_ms / 1000)
            raise busy(reason)

    async def run(request: Request, kind: str, sequences: list[list[int]], ranks: bool = False) -> list:
        """Queue the sequences and wait for their results: 429 if they do not fit, 504 past the deadline; the
        work of a request that timed out or whose client went away is dropped from the queue, not computed."""
        state = request.app.state
        if not state.ready:
            raise APIError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "1"})
        request.state.sequences = len(sequences)
        request.state.batch_size = 0

        def on_batch(n: int) -> None:
            request.state.batch_size = max(request.state.batch_size, n)

        try:
            futures = state.engine.submit(kind, sequences, on_batch, ranks)
        except QueueFullError as e:
            raise busy(str(e)) from None
        except EngineStoppedError:
            raise APIError(503, "not_ready", "the server is shutting down", headers={"Retry-After": "1"}) from None
        results = asyncio.ensure_future(asyncio.gather(*futures))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait(
                {results, gone}, timeout=settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
        if results in done:
            return results.result()
        results.cancel()  # cancels every future: the worker skips them
        results.add_done_callback(_retrieve)  # the cancellation is the outcome: nothing left to log
        if gone in done:
            raise APIError(499, "client_closed", "the client closed the connection; the work was dropped")
        raise APIError(504, "timeout", f"not answered within {settings.request_timeout_s:g} s; the work was dropped")

    @app.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, tags=["scoring"])
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        """Log-probability and perplexity of each sentence (`<eos>`-primed; natural log unless log10)."""
        prep = preparer(request)
        texts = [body.text] if body.text is not None else body.sentences
        prep.check_count(len(texts), "sentences")
        await admit(request, len(texts))
        prepared = [prep.sentence(t, body.normalize, body.add_eos) for t in texts]
        logprobs = await run(request, "score", [p.ids for p in prepared], ranks=body.per_token)
        results = [score_result(p, lp, body.per_token) for p, lp in zip(prepared, logprobs, strict=True)]
        n = sum(r.num_tokens for r in results)
        metrics.tokens_scored.labels("/score").inc(n)
        metrics.oov_tokens.inc(sum(r.num_oov for r in results))
        metrics.nll.inc(-sum(r.logprob for r in results))
        return ScoreResponse(model=request.app.state.ckpt.name, results=results)

    @app.post("/next-word", response_model=NextWordResponse, responses=ERROR_RESPONSES, tags=["scoring"])
    async def next_word(body: NextWordRequest, request: Request) -> NextWordResponse:
        """The most probable next words after each prefix (empty = sentence start), and the candidates' odds."""
        prep = preparer(request)
        # The default top_k serves under any max_top_k; only a top_k the client asked for can exceed it.
        top_k = body.top_k if "top_k" in body.model_fields_set else min(body.top_k, settings.max_top_k)
        if top_k > settings.max_top_k:
            raise APIError(
                422,
                "limit_exceeded",
                f"top_k {top_k}; at most {settings.max_top_k}",
                {"limit": "max_top_k", "value": top_k, "max": settings.max_top_k},
            )
        if body.candidates is not None and len(body.candidates) > settings.max_candidates:
            n = len(body.candidates)
            raise APIError(
                422,
                "limit_exceeded",
                f"{n} candidates; at most {settings.max_candidates}",
                {"limit": "max_candidates", "value": n, "max": settings.max_candidates},
            )
        texts = [body.prefix] if body.prefix is not None else body.prefixes
        prep.check_count(len(texts), "prefixes")
        await admit(request, len(texts))
        prepared = [prep.prefix(t, body.normalize) for t in texts]
        dists = await run(request, "next", [p.ids for p in prepared])
        vocab = request.app.state.ckpt.vocab
        metrics.tokens_scored.labels("/next-word").inc(len(prepared))
        results = [
            next_word_result(p, d, top_k, body.candidates, body.normalize, vocab)
            for p, d in zip(prepared, dists, strict=True)
        ]
        return NextWordResponse(model=request.app.state.ckpt.name, results=results)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: each word's probability as you type, next-word suggestions, a comparison mode."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request):
        """The model is loaded and warmed up and the engine is running (503 otherwise)."""
        state = request.app.state
        if state.ready and state.engine.running and not state.draining:
            return {"status": "ready", "model": state.ckpt.name, "queue_size": state.engine.queue_size()}
        return JSONResponse(
            {
                "error": {
                    "code": "not_ready",
                    "message": "the model is not loaded or the engine is stopped",
                    "details": None,
                }
            },
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def metrics_route() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/model", tags=["operations"])
    async def model_info(request: Request) -> dict:
        """What is being served: name, shape, parameter count, device, dtype and the checkpoint's perplexities."""
        state = request.app.state
        if not state.ready:
            raise APIError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "1"})
        ckpt, runner = state.ckpt, state.runner
        return {
            "name": ckpt.name,
            "path": str(ckpt.path),
            "format": ckpt.meta.get("format"),
            "config": ckpt.config.to_dict(),
            "parameters": ckpt.model.num_parameters(),
            "device": str(runner.device),
            "dtype": runner.dtype_name,
            "vocab_size": len(ckpt.vocab),
            "metrics": {k: ckpt.metrics.get(k) for k in ("valid_ppl", "test_ppl", "train_ppl", "best_epoch")},
            "training": {k: ckpt.training.get(k) for k in ("name", "max_epochs_run", "device", "seed")},
        }

    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Write the serving limits (settings) into the OpenAPI schema, so that it says what the server accepts."""
    generate = app.openapi

    def bound(prop: dict, **limits: int) -> None:
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") in ("string", "array", "integer"):
                key = {"string": "maxLength", "array": "maxItems", "integer": "maximum"}[branch["type"]]
                branch[key] = limits[key]
                if branch["type"] == "array" and "item_max_length" in limits:
                    branch["items"]["maxLength"] = limits["item_max_length"]

    def openapi() -> dict:
        schema = generate()
        models = schema["components"]["schemas"]
        score, nxt = models["ScoreRequest"]["properties"], models["NextWordRequest"]["properties"]
        chars, items = settings.max_chars, settings.max_sentences
        bound(score["text"], maxLength=chars)
        bound(score["sentences"], maxItems=items, item_max_length=chars)
        bound(nxt["prefix"], maxLength=chars)
        bound(nxt["prefixes"], maxItems=items, item_max_length=chars)
        bound(nxt["top_k"], maximum=settings.max_top_k)
        bound(nxt["candidates"], maxItems=settings.max_candidates, item_max_length=chars)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _retrieve(future: asyncio.Future) -> None:
    """Mark the outcome of an abandoned future as seen, so that asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


async def _client_gone(request: Request, poll_s: float = 0.1) -> None:
    """Returns once the client has closed the connection."""
    while not await request.is_disconnected():
        await asyncio.sleep(poll_s)


def _drain_on_sigterm(app: FastAPI, drain_s: float) -> None:
    """On SIGTERM, /readyz turns 503 at once (a load balancer stops sending), and uvicorn's own handler (stop
    accepting, finish what was accepted) runs `drain_s` seconds later. Only in the main thread, where uvicorn
    installed its handler; elsewhere (tests) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame) -> None:
        if app.state.draining or drain_s == 0:
            app.state.draining = True
            server_handler(sig, frame)
            return
        app.state.draining = True
        log.info("SIGTERM: draining for %g s (/readyz answers 503), then stopping", drain_s)
        loop.call_soon_threadsafe(loop.call_later, drain_s, server_handler, sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker runs: settings from the environment."""
    return create_app(Settings())
