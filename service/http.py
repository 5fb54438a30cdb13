"""What every route shares: the readiness dependency, the request's deadline, and the call of the engine on
behalf of a request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import Message, Receive

from service.engine import EngineTimeoutError
from service.errors import not_ready

T = TypeVar("T")


async def ready(request: Request) -> State:
    """The app's collaborators (ckpt, runner, engine, encoder, limits, metrics, settings), once the lifespan
    has loaded the model: 503 `not_ready` before, never a 500. Async, so that FastAPI calls it on the event
    loop: a plain `def` dependency is sent to a worker thread for every request."""
    state = request.app.state
    if not state.ready:
        raise not_ready()
    return state


Ready = Annotated[State, Depends(ready)]  # a route's parameter `state: Ready`: the collaborators, or 503


class Deadline:
    """`request_timeout_s` from the moment the request arrived (the access-log middleware notes it), over
    everything the request costs: preparing its text, waiting in the queue, building its answer.

    The request's own CPU work (normalising, building a large answer) runs in a worker thread, so that the
    event loop keeps answering `/healthz` and refusing overload at once; past the deadline the client gets its
    504 on time, and the thread's result is dropped. A small request's work runs on the loop (`inline`).
    """

    def __init__(self, request: Request) -> None:
        self.timeout = request.app.state.settings.request_timeout_s
        arrived = getattr(request.state, "arrived", None)
        self.end = (time.monotonic() if arrived is None else arrived) + self.timeout

    def left(self) -> float:
        """Seconds left; EngineTimeoutError (504) when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise EngineTimeoutError(self.timeout)
        return left

    def each(self, work: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """`work(item)` for every item, in the calling thread, the deadline checked before each: the work of a
        request that already had its 504 stops at the next item instead of keeping a worker thread (and the
        CPU) busy for the requests after it."""
        done = []
        for item in items:
            self.left()
            done.append(work(item))
        return done

    async def map(self, work: Callable[[Any], T], items: Sequence[Any], *, inline: bool = False) -> list[T]:
        """`each(work, items)` where `off_loop` runs it: a request's per-text work (normalising, encoding)."""
        return await self.off_loop(lambda: self.each(work, items), inline=inline)

    async def off_loop(self, work: Callable[[], T], *, inline: bool = False) -> T:
        """`work()` in a worker thread, within the deadline; on the event loop itself when the caller says it
        is small (`inline`): for a few sentences the hand-off to a thread costs more than the work."""
        if inline:
            self.left()
            return work()
        try:
            async with asyncio.timeout(self.left()):
                return await asyncio.to_thread(work)
        except TimeoutError:
            raise EngineTimeoutError(self.timeout) from None


def ready_message(receive: Receive) -> Message | None:
    """The message `receive()` has ready now, or None when it would have to wait for one (nothing consumed).

    What Starlette's `Request.is_disconnected` asks by awaiting `receive()` in an anyio cancel scope cancelled
    in advance, without the scope: the awaitable is stepped once by hand, and where it would wait, its wait is
    cancelled as a task's cancellation would cancel it (the future it waits on, then CancelledError thrown in,
    so that its cleanup runs: the waiter leaves the event or queue it joined). About 3 us a question against
    60 us for the cancel scope, which is what the engine's poll of every waiting request cost under load."""
    step = receive().__await__()
    try:
        waited = step.send(None)
    except StopIteration as done:
        return done.value
    if isinstance(waited, asyncio.Future):
        waited.cancel()
    try:
        step.throw(asyncio.CancelledError())
    except asyncio.CancelledError:
        return None
    except StopIteration as done:  # it took the cancellation and answered all the same
        return done.value
    step.close()  # it waits again (a cleanup that awaits): no message now
    return None


class ClientWatch:
    """`watch()`: whether the client of a request whose body has been read has gone (an `http.disconnect` is
    ready on its receive channel); asked without waiting, and true from then on."""

    __slots__ = ("gone", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive, self.gone = receive, False

    def __call__(self) -> bool:
        if not self.gone:
            message = ready_message(self.receive)
            self.gone = message is not None and message.get("type") == "http.disconnect"
        return self.gone


def json_body(model: BaseModel) -> Response:
    """A response model as JSON bytes, serialised where it is called (in a worker thread, by `off_loop`)."""
    return Response(model.model_dump_json(), media_type="application/json")


async def run_jobs(request: Request, jobs: Sequence[Any], deadline: Deadline | None = None) -> list[Any]:
    """The engine's results for `jobs`, on behalf of `request`: all their tokens within max_request_tokens
    (422 beyond, nothing queued), dropped if its client goes away, the number of sequences and the largest
    batch they ran in noted for the access log."""
    request.app.state.limits.check_request_tokens(sum(job.num_tokens for job in jobs))
    request.state.sequences = len(jobs)
    request.state.batch_size = 0

    def on_batch(n: int) -> None:
        request.state.batch_size = max(request.state.batch_size, n)

    engine = request.app.state.engine
    timeout = deadline.left() if deadline is not None else None
    try:
        return await engine.run(jobs, timeout=timeout, is_disconnected=ClientWatch(request.receive), on_batch=on_batch)
    except EngineTimeoutError:
        if deadline is None:
            raise
        raise EngineTimeoutError(deadline.timeout) from None  # the request's timeout, not what was left of it
