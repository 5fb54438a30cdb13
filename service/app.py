"""The HTTP layer: `create_app(settings)` builds the FastAPI app (middleware, one error path, the adapters'
routes, the operations routes); its lifespan loads the checkpoint, warms the model up, starts the batching
engine, and stops it cleanly.

    python -m service --model models/ptb-cpu --port 8000
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from lm.checkpoint import load_checkpoint
from lm.encoding import SentenceEncoder
from service.adapters import native, openai
from service.docs import declare_security, install_docs
from service.engine import BatchingEngine
from service.errors import install_error_handlers, not_ready
from service.http import Ready
from service.lane import FastLane, lanes_for
from service.limits import Limits
from service.memory import release_memory_periodically, steady_heap
from service.metrics import CONTENT_TYPE, Metrics
from service.middleware import KEYED, Guard, GuardedRoute, RequestObserverMiddleware, endpoint_of
from service.runner import ModelRunner, leave_threads_to_lanes
from service.schemas import ErrorResponse
from service.settings import Settings

log = logging.getLogger("service")

STATIC_DIR = Path(__file__).parent / "static"
REJECT_REASONS = {
    "client_closed": "client_closed",
    "queue_full": "queue_full",
    "timeout": "timeout",
    "limit_exceeded": "too_long",
    "unauthorized": "unauthorized",
}
ADAPTERS = (native, openai)  # the request adapters: each module's `router` is included
FAST_LANE = ("/score", "/next-word", "/v1/completions")  # POSTs of JSON answered by service.lane.FastLane


def create_app(settings: Settings | None = None, *, fast_lane: bool = True) -> FastAPI:
    """The service, ready for uvicorn; nothing is loaded until the lifespan starts. `fast_lane=False` leaves
    every request to FastAPI (the lane's tests compare the two)."""
    settings = settings or Settings()
    metrics = Metrics()
    limits = Limits(settings)
    app = FastAPI(
        title="PTB LSTM language-model scoring service",
        version="0.1.0",
        description=(
            "Scores sentences and predicts next words with an LSTM language model of the Penn Treebank. "
            "All log-probabilities are natural logs unless the field says log10."
        ),
        lifespan=lifespan,
        docs_url=None,  # install_docs serves Swagger UI from the package, not from a CDN
        redoc_url=None,
        # The service's telemetry is its Prometheus metrics and JSON log: FastAPI's OpenTelemetry hooks off, so
        # that no request pays for looking up OpenTelemetry providers (about 4% of a /score request's loop time).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings, app.state.metrics, app.state.limits = settings, metrics, limits
    app.state.ready, app.state.draining = False, False

    def on_reject(request: Request, status: int, code: str) -> None:
        if 400 <= status < 500 or status in (503, 504):
            reason = REJECT_REASONS.get(code, "bad_request")
            metrics.rejected.labels(endpoint_of(request.scope), reason).inc()

    install_error_handlers(app, on_reject, settings.retry_after_s)
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.state.guard = Guard(limits, metrics, key, settings.body_timeout_s)
    app.router.route_class = GuardedRoute  # every API route applies the guard its declaration asks for

    for adapter in ADAPTERS:
        app.include_router(adapter.router)
    if fast_lane:
        adapter_routes = [route for adapter in ADAPTERS for route in adapter.router.routes]
        # The handlers FastAPI's exception middleware applies (an unexpected Exception is the observer's).
        handlers = {k: v for k, v in app.exception_handlers.items() if isinstance(k, type) and k is not Exception}
        app.add_middleware(FastLane, lanes=lanes_for(adapter_routes, FAST_LANE), handlers=handlers)
    app.add_middleware(RequestObserverMiddleware, metrics=metrics)  # added last: the outermost of the two
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["operations"])
    app.add_api_route(
        "/readyz", readyz, methods=["GET"], tags=["operations"], responses={503: {"model": ErrorResponse}}
    )
    app.add_api_route(
        "/metrics",
        metrics_text,
        methods=["GET"],
        tags=["operations"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        openapi_extra=KEYED if settings.metrics_require_key else None,
    )
    app.add_api_route("/model", model_info, methods=["GET"], tags=["operations"], openapi_extra=KEYED)

    install_docs(app)
    generate = app.openapi
    keyed = settings.api_key is not None
    app.openapi = lambda: declare_security(limits.document(generate()), keyed)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Load the checkpoint, warm the model up, start the engine; on the way out, finish the queue and stop."""
    state = app.state
    settings, metrics = state.settings, state.metrics
    # Only the forward lanes run torch on several threads (runner.py's docstring: one OpenMP team per thread, and
    # past the CPU count every team's workers sleep between the small steps of a pass). The threads they share are
    # read here, before this thread and the worker threads (loading, answering) are set to one.
    threads = settings.threads or torch.get_num_threads()
    leave_threads_to_lanes()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="lm-worker", initializer=leave_threads_to_lanes))
    ckpt = await asyncio.to_thread(load_checkpoint, settings.model)
    runner = ModelRunner(ckpt, settings.model_copy(update={"threads": threads}), metrics)
    engine = BatchingEngine(runner.run, metrics, settings, runner.lane_width, lanes=runner.lanes)
    await engine.start()
    await engine.warm(runner.warmup)
    state.ckpt, state.runner, state.engine, state.encoder = ckpt, runner, engine, SentenceEncoder.for_checkpoint(ckpt)
    metrics.model_info.labels(ckpt.name, str(runner.device), runner.dtype_name).set(1)
    state.ready = True
    _drain_on_sigterm(app, settings.drain_s)
    log.info(
        "serving %s (%s parameters) on %s as %s, %d torch threads, %d forward lanes",
        ckpt.path,
        f"{ckpt.model.num_parameters():,}",
        runner.device,
        runner.dtype_name,
        runner.threads,
        runner.lanes,
    )
    trimming = asyncio.create_task(release_memory_periodically())
    try:
        with steady_heap(settings.gc_threshold):
            yield
    finally:
        state.ready = False
        trimming.cancel()
        await engine.stop()


async def page() -> FileResponse:
    """The web page: each word's probability as you type, next-word suggestions, a comparison mode."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


async def readyz(request: Request) -> dict:
    """The model is loaded and warmed up and the engine is running (503 otherwise)."""
    state = request.app.state
    if not (state.ready and state.engine.running and not state.draining):
        raise not_ready("the model is not loaded or the engine is stopped")
    return {"status": "ready", "model": state.ckpt.name, "queue_size": state.engine.queue_size()}


async def metrics_text(request: Request) -> Response:
    """Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def model_info(state: Ready) -> dict:
    """What is being served: name, shape, parameter count, device, dtype, torch threads and forward lanes, and
    the checkpoint's perplexities."""
    ckpt, runner = state.ckpt, state.runner
    return {
        "name": ckpt.name,
        "path": str(ckpt.path),
        "format": ckpt.meta.get("format"),
        "config": ckpt.config.to_dict(),
        "parameters": ckpt.model.num_parameters(),
        "device": str(runner.device),
        "dtype": runner.dtype_name,
        "threads": runner.threads,
        "forward_lanes": runner.lanes,
        "vocab_size": len(ckpt.vocab),
        "tokenizer": state.encoder.tokenizer.spec(),
        "metrics": {k: ckpt.metrics.get(k) for k in ("valid_ppl", "test_ppl", "train_ppl", "best_epoch")},
        "training": {k: ckpt.training.get(k) for k in ("name", "max_epochs_run", "device", "seed")},
    }


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
