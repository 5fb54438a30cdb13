"""What every route shares: the readiness dependency and the call of the engine on behalf of a request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import State

from service.errors import not_ready


def ready(request: Request) -> State:
    """The app's collaborators (ckpt, runner, engine, encoder, limits, metrics, settings), once the lifespan
    has loaded the model: 503 `not_ready` before, never a 500."""
    state = request.app.state
    if not state.ready:
        raise not_ready()
    return state


Ready = Annotated[State, Depends(ready)]  # a route's parameter `state: Ready`: the collaborators, or 503


async def run_jobs(request: Request, jobs: Sequence[Any]) -> list[Any]:
    """The engine's results for `jobs`, on behalf of `request`: dropped if its client goes away, the number of
    sequences and the largest batch they ran in noted for the access log."""
    request.state.sequences = len(jobs)
    request.state.batch_size = 0

    def on_batch(n: int) -> None:
        request.state.batch_size = max(request.state.batch_size, n)

    engine = request.app.state.engine
    return await engine.run(jobs, is_disconnected=request.is_disconnected, on_batch=on_batch)
