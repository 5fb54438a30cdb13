"""The FastAPI application: `create_app(settings)` builds it; its lifespan loads the checkpoint, warms the model
up, starts the batching engine, and stops it cleanly.

    python -m service --model models/ptb-small --port 8000
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lm.checkpoint import load_checkpoint
from service.engine import BatchingEngine, EngineStoppedError, QueueFullError
from service.errors import APIError, error_response, install_error_handlers
from service.metrics import CONTENT_TYPE, Metrics
from service.schemas import ErrorResponse, NextWordRequest, NextWordResponse, ScoreRequest, ScoreResponse
from service.scoring import ModelRunner, Preparer, next_word_result, score_result
from service.settings import Settings

log = logging.getLogger("service")

ENDPOINTS = {"/", "/score", "/next-word", "/healthz", "/readyz", "/metrics", "/model"}
STATIC_DIR = Path(__file__).parent / "static"
ERROR_RESPONSES = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        413: "body too large",
        422: "invalid request or a limit exceeded",
        429: "queue full: retry after Retry-After seconds",
        503: "not ready",
        504: "timed out",
    }.items()
}
REJECT_REASONS = {"queue_full": "queue_full", "timeout": "timeout", "limit_exceeded": "too_long"}


def _endpoint(scope: Scope) -> str:
    path = scope.get("path", "")
    return path if path in ENDPOINTS else "other"


class RequestMetricsMiddleware:
    """Counts and times every request by endpoint and status code (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = _endpoint(scope)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`, by Content-Length up front or by counting a streamed body."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, int(declared))
            return
        # A body without Content-Length (chunked) is read and counted here, then replayed to the app: an error
        # raised while FastAPI reads the body would become its generic 400, not the 413 a client should get.
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(scope, receive, send, received)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        self.metrics.rejected.labels(_endpoint(scope), "too_long").inc()
        response = error_response(
            413,
            "limit_exceeded",
            f"request body of {size:,}+ bytes; at most {self.max_bytes:,}",
            {"limit": "max_body_bytes", "value": size, "max": self.max_bytes},
        )
        await response(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, ready for uvicorn; nothing is loaded until the lifespan starts."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ckpt = await asyncio.to_thread(load_checkpoint, settings.model)
        runner = ModelRunner(ckpt, settings)
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
        responses={500: {"model": ErrorResponse, "description": "internal error"}},
    )
    app.state.settings, app.state.metrics, app.state.ready = settings, metrics, False

    def on_reject(request: Request, status: int, code: str) -> None:
        if 400 <= status < 500 or status in (503, 504):
            reason = REJECT_REASONS.get(code, "bad_request")
            metrics.rejected.labels(_endpoint(request.scope), reason).inc()

    install_error_handlers(app, on_reject)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    def preparer(request: Request) -> Preparer:
        """The request preparer, once the lifespan has loaded the model (503 before, never a 500)."""
        if not request.app.state.ready:
            raise APIError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "1"})
        return request.app.state.preparer

    async def run(request: Request, kind: str, sequences: list[list[int]]) -> list:
        state = request.app.state
        if not state.ready:
            raise APIError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "1"})
        try:
            futures = state.engine.submit(kind, sequences)
        except QueueFullError as e:
            raise APIError(
                429,
                "queue_full",
                f"the server is busy ({e}); retry later",
                None,
                {"Retry-After": str(settings.retry_after_s)},
            ) from None
        except EngineStoppedError:
            raise APIError(503, "not_ready", "the server is shutting down", headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), settings.request_timeout_s)
        except TimeoutError:
            for f in futures:
                f.cancel()
            raise APIError(
                504, "timeout", f"not answered within {settings.request_timeout_s:g} s; the work was dropped"
            ) from None

    @app.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, tags=["scoring"])
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        """Log-probability and perplexity of each sentence (`<eos>`-primed; natural log unless log10)."""
        prep = preparer(request)
        texts = [body.text] if body.text is not None else body.sentences
        prep.check_count(len(texts), "sentences")
        prepared = [prep.sentence(t, body.normalize, body.add_eos) for t in texts]
        logprobs = await run(request, "score", [p.ids for p in prepared])
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
        if state.ready and state.engine.running:
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

    @app.get("/metrics", tags=["operations"])
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

    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker runs: settings from the environment."""
    return create_app(Settings())
