"""The service as `python -m service` runs it, with one change, for measuring what the HTTP side costs a request.

    python -m benchmarks.instrumented --stages /tmp/stages.json --port 8001   # timestamps each request's stages
    python -m benchmarks.instrumented --bare --port 8001                      # /score without the HTTP framework

Every other flag is the service's (one worker: the changes are made in this process).
`benchmarks.profile_server --stages`, `benchmarks.ab --bare` and the peers comparison's `lmserve-bare` start it.

`--stages FILE`: the server notes when each step of a request happens (`time.perf_counter`, in whichever thread
takes it) and, on SIGUSR1, writes the notes to FILE as JSON (`[[stage, seconds], ...]`, in the order taken) and
exits. The steps (`STAGES`): the request's bytes reach the protocol (`recv`); its jobs are queued in the engine
(`queued`); a lane's thread starts the pass (`pass`) and ends it (`passed`); the request's task has the results
(`results`); its JSON answer is built (`built`); the answer leaves in one write (`sent`); the request observer
(metrics, access log) is done with it (`observed`). With one client the notes of one request follow each other,
and the next request's `recv` closes its cycle (`stage_medians`).

`--bare`: `POST /score` is answered in the HTTP protocol itself, the moment its body is complete: the body parsed
and validated with the route's model, the sentences encoded, the engine's results, the answer built as the route
builds it, written with a minimal head. No ASGI app, no middleware: no metrics, access log, request id, API key,
limits, deadline or client watch, and an unexpected error answers a bare 500. Not a service: a bound on what the
leanest HTTP handling could save, with the same model, engine, encoding and answer. Anything else (another path,
another method) is the service's as usual.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("recv", "queued", "pass", "passed", "results", "built", "sent", "observed")


def install_stages(path: Path) -> None:
    """Note each request's stages (see the module's docstring); SIGUSR1 writes them to `path` and exits."""
    import service.adapters.native as native
    from service import connection, engine, middleware

    notes: list[tuple[str, float]] = []
    note = notes.append  # a list's append is atomic: the lanes' threads note too
    clock = time.perf_counter

    protocol = connection.GuardedHttpToolsProtocol
    received = protocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        note(("recv", clock()))
        received(self, data)

    submit = engine.BatchingEngine.submit

    def queued(self: Any, *args: Any, **kwargs: Any) -> Any:
        futures = submit(self, *args, **kwargs)
        note(("queued", clock()))
        return futures

    in_lane = engine.BatchingEngine._in_lane

    def lane(self: Any, *args: Any) -> Any:
        note(("pass", clock()))
        try:
            return in_lane(self, *args)
        finally:
            note(("passed", clock()))

    run = engine.BatchingEngine.run

    async def results(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = await run(self, *args, **kwargs)
        note(("results", clock()))
        return out

    json_body = native.json_body

    def built(model: Any) -> Any:
        response = json_body(model)
        note(("built", clock()))
        return response

    write = connection.CoalescedWrites.write

    def sent(self: Any, data: Any) -> None:
        write(self, data)
        if self._held is None:  # went out now (not held for the body)
            note(("sent", clock()))

    observe = middleware.RequestObserverMiddleware.__call__

    async def observed(self: Any, scope: Any, receive: Any, send: Any) -> None:
        try:
            await observe(self, scope, receive, send)
        finally:
            if scope["type"] == "http":
                note(("observed", clock()))

    protocol.data_received = data_received  # type: ignore[method-assign]
    engine.BatchingEngine.submit = queued  # type: ignore[method-assign]
    engine.BatchingEngine._in_lane = lane  # type: ignore[method-assign]
    engine.BatchingEngine.run = results  # type: ignore[method-assign]
    native.json_body = built
    connection.CoalescedWrites.write = sent  # type: ignore[method-assign]
    middleware.RequestObserverMiddleware.__call__ = observed  # type: ignore[method-assign]

    def dump(signum: int, frame: Any) -> None:
        path.write_text(json.dumps(list(notes)))
        os._exit(0)

    signal.signal(signal.SIGUSR1, dump)


def stage_medians(notes: list[tuple[str, float]]) -> dict[str, float]:
    """One client's notes -> the median milliseconds from each stage to the next, over the requests whose cycle
    (from one `recv` to the next) holds every stage once, in order; `client` is from `sent` to the next `recv`
    (the client reads the answer and sends again), `cycle` the whole, and `observed` is counted from `sent`
    (the observer's work after the answer goes, beside the client's turn)."""
    cycles: list[list[tuple[str, float]]] = []
    for stage, t in notes:
        if stage == "recv" or not cycles:
            cycles.append([])
        cycles[-1].append((stage, t))
    chain = STAGES[:-1]  # "observed" is counted from "sent"
    gaps: dict[str, list[float]] = {s: [] for s in [*chain[1:], "client", "cycle", "observed"]}
    for this, after in itertools.pairwise(cycles):
        if tuple(s for s, _ in this) != STAGES or after[0][0] != "recv":
            continue
        at = dict(this)
        for before, stage in itertools.pairwise(chain):
            gaps[stage].append(at[stage] - at[before])
        gaps["client"].append(after[0][1] - at["sent"])
        gaps["cycle"].append(after[0][1] - at["recv"])
        gaps["observed"].append(at["observed"] - at["sent"])
    if not gaps["cycle"]:
        raise ValueError("no complete request cycle in the notes (one client's requests, every stage)")
    return {stage: 1000 * statistics.median(xs) for stage, xs in gaps.items()}


def install_bare() -> None:
    """`POST /score` answered in the protocol itself (see the module's docstring)."""
    import asyncio

    from service import connection
    from service.adapters.native import encode_sentence, score_result
    from service.runner import ScoreJob
    from service.schemas import ScoreRequest, ScoreResponse

    protocol = connection.GuardedHttpToolsProtocol
    on_headers, on_body, on_complete = protocol.on_headers_complete, protocol.on_body, protocol.on_message_complete

    def state_of(app: Any) -> Any:
        while not hasattr(app, "state"):  # uvicorn's wrappers, down to the FastAPI app
            app = app.app
        return app.state

    async def answer(self: Any, body: bytes) -> None:
        try:
            state = state_of(self.app)
            req = ScoreRequest.model_validate(json.loads(body))
            texts = [req.text] if req.text is not None else req.sentences
            encoded = [encode_sentence(state.encoder, state.limits, t, req.normalize, req.add_eos) for t in texts]
            scores = await state.engine.run([ScoreJob(e.ids, ranks=req.per_token) for e in encoded])
            results = [score_result(t, e, s, req.per_token) for t, e, s in zip(texts, encoded, scores, strict=True)]
            payload = ScoreResponse(model=state.ckpt.name, results=results).model_dump_json().encode()
            status = b"200 OK"
        except Exception as e:  # a benchmark's server: the error in the body, and on
            payload, status = json.dumps({"error": repr(e)}).encode(), b"500 Internal Server Error"
        head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (status, len(payload))
        self.transport.write(head + payload)
        self.on_response_complete()

    def headers_complete(self: Any) -> None:
        self._bare = [] if self.parser.get_method() == b"POST" and self.url == b"/score" else None
        if self._bare is None:
            on_headers(self)

    def body(self: Any, data: bytes) -> None:
        if getattr(self, "_bare", None) is None:
            on_body(self, data)
        else:
            self._bare.append(data)

    def complete(self: Any) -> None:
        if getattr(self, "_bare", None) is None:
            on_complete(self)
            return
        data, self._bare = b"".join(self._bare), None
        task = asyncio.get_running_loop().create_task(answer(self, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    protocol.on_headers_complete = headers_complete  # type: ignore[method-assign]
    protocol.on_body = body  # type: ignore[method-assign]
    protocol.on_message_complete = complete  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=Path, metavar="FILE", help="note each request's stages; SIGUSR1 writes them")
    p.add_argument("--bare", action="store_true", help="POST /score answered without the HTTP framework")
    args, rest = p.parse_known_args(argv)
    if args.stages is not None:
        install_stages(args.stages)
    if args.bare:
        install_bare()
    from service.__main__ import main as serve

    return serve(rest)


if __name__ == "__main__":
    sys.exit(main())
