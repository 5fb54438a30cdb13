"""The batching engine: many concurrent callers, one forward pass; generic over the kind of job.

The engine knows one thing about a job: its size in tokens (`job.num_tokens`), which is what a batch is bounded
by. What a job means is the business of the `run_batch(jobs) -> results` function it is given (the model runner).

`await engine.run(jobs, timeout=..., is_disconnected=...)` is the entry point: it queues one entry per job, each
with its own future, and waits for the results. One worker task gathers entries until the batch is full (by jobs
or by padded tokens, rows x longest) or the oldest entry has waited `max_wait_ms` (at once, when calls have lately
come without company: too far apart, or each to an idle engine; waiting would only delay them), sorts them by
size so that little padding is computed, runs the batch in a worker thread (off the event loop) and resolves each
future. With `forward_lanes` > 1, up to that many batches run at once, each in a thread of its own; a lane takes
its share of the work in hand (queued and running jobs over the lanes), and a batch with nothing else to do runs
alone, wide (`lane_width`: the runner gives it the threads the other lanes leave).
The queue is fair between calls: each call's jobs wait in their own line, and a batch takes one job from each
line in turn, so a call of one sentence arriving behind a call of 200 rides in the next batch, not after the
200. A batch that raises fails its own jobs only; the worker carries on. The queue is bounded, and a call is
refused before any of its jobs is queued (`admit` refuses before the caller has prepared anything). A call that
times out, or whose client goes away, cancels its jobs: they leave the queue's count at once and are never
computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.engine")

DISCONNECT_POLL_S = 0.1  # how often the engine asks whether a waiting call's client is still there
# The weight of each new call in the engine's estimate of how often a call comes in company: within max_wait_ms
# of the one before, and while other work is in hand (about the last ten calls count); below COMPANY_LIKELY, a
# batch that is not full runs without waiting. A pair of clients whose calls alternate (one to an idle engine,
# the other while it waits) holds the estimate near one in two: above the bar.
COMPANY_WEIGHT = 0.1
COMPANY_LIKELY = 0.25


class Job(Protocol):
    """What the engine needs of a job: its size in tokens, for batching."""

    @property
    def num_tokens(self) -> int: ...


J = TypeVar("J", bound=Job)
R = TypeVar("R")
T = TypeVar("T")


class EngineError(Exception):
    """A call the engine did not answer with results."""


class QueueFullError(EngineError):
    """The queue cannot take the call's jobs now (HTTP: 429)."""


class EngineStoppedError(EngineError):
    """The engine is not running: starting up or shutting down (HTTP: 503)."""


class EngineTimeoutError(EngineError):
    """The results did not come within the call's timeout; its jobs were dropped (HTTP: 504)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"not answered within {timeout:g} s; the work was dropped")
        self.timeout = timeout


class ClientGoneError(EngineError):
    """The caller went away before the results came; its jobs were dropped (HTTP: 499)."""


@dataclass
class _Entry(Generic[J]):
    """A job in the queue, with its future."""

    job: J
    future: asyncio.Future = field(repr=False)
    enqueued: float
    on_batch: Callable[[int], None] | None = field(default=None, repr=False)  # told the size of its batch
    queued: bool = field(default=True, repr=False)  # in the queue and counted in its size

    @property
    def wanted(self) -> bool:
        """Queued, and someone still waits for it (not cancelled, even if its callback has not run yet)."""
        return self.queued and not self.future.done()


class _Waiting:
    """A call of `run` waiting for its results, until they come or `end(why)` cancels them: "timeout", "gone"
    (its client went away), or the exception that asking its client raised."""

    __slots__ = ("is_disconnected", "results", "why")

    def __init__(self, results: asyncio.Future, is_disconnected: Callable[[], bool] | None) -> None:
        self.results, self.is_disconnected = results, is_disconnected
        self.why: str | Exception | None = None

    def end(self, why: str | Exception) -> None:
        if self.why is None and not self.results.done():
            self.why = why
            self.results.cancel()


class BatchingEngine(Generic[J, R]):
    """Dynamic batching over `run_batch(jobs) -> results` (one result per job, same order).

    Its bounds and waits come from `Settings`: max_batch_sequences, max_batch_tokens, max_wait_ms, max_queue,
    request_timeout_s (the default timeout of `run`), busy_delay_ms (how slowly `admit` refuses) and
    forward_lanes (batches at once; `lanes`, when given, decides instead: the runner's choice when the settings
    leave it open; 1 when neither says).
    """

    def __init__(
        self,
        run_batch: Callable[[list[J]], list[R]],
        metrics: Metrics,
        settings: Settings,
        lane_width: Callable[[bool], None] | None = None,
        lanes: int | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.metrics = metrics
        self.max_batch_sequences = settings.max_batch_sequences
        self.max_batch_tokens = settings.max_batch_tokens
        self.max_wait = settings.max_wait_ms / 1000.0
        self.max_queue = settings.max_queue
        self.timeout = settings.request_timeout_s
        self.busy_delay = settings.busy_delay_ms / 1000.0
        self.lanes = lanes or settings.forward_lanes or 1
        # One line of entries per call, in the order the calls are served next (round-robin).
        self._lines: deque[deque[_Entry[J]]] = deque()
        self._held = 0  # entries in the lines, cancelled ones included
        # Jobs in the queue that someone still waits for: what the bound counts. A job cancelled while queued
        # (its client left, its call timed out) stops counting at once, though it leaves the deque only when
        # the worker reaches it (or when a purge clears out many such entries).
        self._live = 0
        # How often a call has lately come in company (an exponential average, from twice COMPANY_LIKELY: company
        # is expected until calls are seen to come alone, about seven). Waiting for company pays only when it comes.
        self._company = 2 * COMPANY_LIKELY
        self._last_call = -float("inf")
        self._wakeup = asyncio.Event()  # a call was queued (or the engine is stopping)
        self._lane_free = asyncio.Event()  # a pass ended
        self._task: asyncio.Task | None = None
        self._stopping = False
        # One thread per lane, each running one batch at a time. `lane_width(wide)` is told in the lane's thread
        # before each pass whether it runs alone (wide: the whole CPU is its) or beside others (its share): the
        # runner sets its torch threads (with one lane, the same either way).
        self.lane_width = lane_width
        # A thread of its own per lane, and a pass goes to the first free lane: a lone client's passes all run in
        # lane 0's thread, with the one OpenMP team that thread keeps (two threads taking turns would wake two).
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"lm-forward-{i}") for i in range(self.lanes)]
        self._passes: dict[asyncio.Task, tuple[int, int]] = {}  # the batches running now: (lane, size)
        self._wide = False  # a pass that runs alone, with every thread, is running: no other lane starts
        self._watched: set[_Waiting] = set()  # the waiting calls whose clients the watcher asks after
        self._watcher: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def queue_size(self) -> int:
        """Queued jobs still wanted (cancelled ones excluded)."""
        return self._live

    def _in_hand(self) -> int:
        """Jobs queued (still wanted) or in a running pass."""
        return self._live + sum(size for _, size in self._passes.values())

    def has_room(self, n: int) -> bool:
        """Whether n more jobs fit the queue now."""
        return self._live + n <= self.max_queue

    async def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._worker(), name="batching-engine")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._passes:
            await asyncio.wait(self._passes)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._task = None
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def warm(self, warmup: Callable[[], object]) -> None:
        """`warmup()` in each lane's thread in turn, at the width its passes take there (the first lane alone, the
        others beside it), so that no lane's first pass pays for lazy initialisation."""
        loop = asyncio.get_running_loop()
        for lane, executor in enumerate(self._executors):
            await loop.run_in_executor(executor, self._in_lane, lane == 0, warmup)

    async def admit(self, n: int) -> None:
        """QueueFullError if n jobs cannot be queued now: a caller asks before it prepares its jobs. Under
        overload a refusal must cost little and come slowly (`busy_delay_ms`), or refused clients retrying at
        once take the CPU the forward pass needs."""
        if self.running and not self.has_room(n):
            reason = f"{self._live} sequences queued, {n} more would pass {self.max_queue}"
            await asyncio.sleep(self.busy_delay)
            raise QueueFullError(reason)

    async def run(
        self,
        jobs: Sequence[J],
        *,
        timeout: float | None = None,
        is_disconnected: Callable[[], bool] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[R]:
        """The results of `jobs`, in their order.

        Raises QueueFullError (they do not fit; nothing queued), EngineStoppedError, EngineTimeoutError past
        `timeout` seconds (default: request_timeout_s) and ClientGoneError once `is_disconnected()` answers true
        (a plain call that must not wait, asked every DISCONNECT_POLL_S while the call waits); in the last two
        cases, and when the caller is cancelled, the jobs are cancelled and never computed. A job whose batch
        failed raises that batch's exception. `on_batch(n)` is told the size of each batch a job runs in.
        """
        timeout = self.timeout if timeout is None else timeout
        futures = self.submit(jobs, on_batch)
        # One job (most calls) is waited on as its own future; several, as one gather of theirs.
        results = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        # The caller's task sleeps until its results come, or until its timer or the watcher (which asks every
        # waiting call's client in turn) cancels them: no task, no poll of its own, one wake-up per call.
        call = _Waiting(results, is_disconnected)
        timer = asyncio.get_running_loop().call_later(timeout, call.end, "timeout")
        if is_disconnected is not None:
            self._watched.add(call)
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch(), name="batching-engine-clients")
        try:
            outcome = await results
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call.why is None or (task is not None and task.cancelling()):
                raise  # the caller itself was cancelled
            if call.why == "timeout":
                raise EngineTimeoutError(timeout) from None
            if call.why == "gone":
                raise ClientGoneError("the client closed the connection; the work was dropped") from None
            raise call.why from None  # asking the client failed
        finally:
            timer.cancel()
            self._watched.discard(call)
            if not results.done():
                results.cancel()  # cancels every future: the worker skips them
                results.add_done_callback(_retrieve)  # the cancellation is the outcome: nothing left to log
        return [outcome] if results is futures[0] else outcome

    async def _watch(self) -> None:
        """Every DISCONNECT_POLL_S while calls wait: ask each waiting call's client whether it is still there,
        and end the calls of those that went (their jobs are cancelled, never computed)."""
        while self._watched:
            await asyncio.sleep(DISCONNECT_POLL_S)
            for call in list(self._watched):
                try:
                    gone = call.is_disconnected()
                except Exception as e:  # the call fails with it, as if it had asked itself
                    call.end(e)
                    continue
                if gone:
                    call.end("gone")

    def submit(self, jobs: Sequence[J], on_batch: Callable[[int], None] | None = None) -> list[asyncio.Future]:
        """Queue one entry per job and return their futures; all or nothing. The building block of `run`."""
        if not self.running or self._stopping:
            raise EngineStoppedError("the engine is not running")
        if not self.has_room(len(jobs)):
            raise QueueFullError(f"{self._live} sequences queued, {len(jobs)} more would pass {self.max_queue}")
        loop = asyncio.get_running_loop()
        futures = []
        now = time.monotonic()
        # Company is a call that comes while others are queued or running. One that comes to an idle engine, however
        # soon after the last, keeps none: a client alone, calling again as soon as it has its answer, is no
        # company to itself (with answers quicker than max_wait_ms, it would otherwise wait on every call).
        close = self._in_hand() > 0 and now - self._last_call < self.max_wait
        self._company += COMPANY_WEIGHT * (close - self._company)
        self._last_call = now
        line: deque[_Entry[J]] = deque()
        for job in jobs:
            entry = _Entry(job, loop.create_future(), now, on_batch)
            entry.future.add_done_callback(lambda f, entry=entry: self._on_done(f, entry))
            line.append(entry)
            futures.append(entry.future)
        if line:
            self._lines.append(line)
            self._held += len(line)
        self._live += len(jobs)
        self.metrics.queue_size.set(self._live)
        self._wakeup.set()
        return futures

    def _dequeued(self, entry: _Entry[J]) -> None:
        if entry.queued:
            entry.queued = False
            self._live -= 1

    def _on_done(self, future: asyncio.Future, entry: _Entry[J]) -> None:
        """A queued entry's future was cancelled: it no longer takes a place in the queue."""
        if future.cancelled() and entry.queued:
            self._dequeued(entry)
            self.metrics.queue_size.set(self._live)
            if self._held > 2 * self.max_queue:  # many cancelled entries (during a long batch): drop them now
                kept = (deque(e for e in line if e.queued) for line in self._lines)
                self._lines = deque(line for line in kept if line)
                self._held = sum(map(len, self._lines))

    def _head(self, line: deque[_Entry[J]]) -> _Entry[J] | None:
        """The first entry of a line that someone still waits for; the dead ones before it are dropped."""
        while line and not line[0].wanted:
            self._dequeued(line.popleft())  # cancelled: its callback, maybe still to run, finds it dequeued
            self._held -= 1
        return line[0] if line else None

    def _oldest(self) -> float | None:
        """When the longest-waiting live entry was queued (None: nothing is queued)."""
        heads = [head.enqueued for line in self._lines if (head := self._head(line)) is not None]
        return min(heads, default=None)

    def _full(self) -> bool:
        """Whether the queue holds a full batch: max_batch_sequences jobs, or more padded tokens than a batch
        takes (a rough count: a line's jobs are counted in its order)."""
        rows = longest = 0
        for line in self._lines:
            for entry in line:
                if entry.wanted:
                    rows += 1
                    longest = max(longest, entry.job.num_tokens)
                    if rows >= self.max_batch_sequences or rows * longest >= self.max_batch_tokens:
                        return True
        return False

    def _take(self, rows: int) -> list[_Entry[J]]:
        """The next batch: one job from each line in turn (round-robin, from where the last batch stopped)
        until `rows` rows, or until no line's next job fits the padded-token budget (rows x longest <=
        max_batch_tokens; the first job always fits, so a longer one runs alone)."""
        batch: list[_Entry[J]] = []
        longest = 0
        lines = self._lines
        stuck = 0  # lines visited in a row whose next job did not fit
        while lines and stuck < len(lines) and len(batch) < rows:
            line = lines[0]
            entry = self._head(line)
            if entry is None:
                lines.popleft()
                continue
            wider = max(longest, entry.job.num_tokens)
            if batch and (len(batch) + 1) * wider > self.max_batch_tokens:
                stuck += 1
                lines.rotate(-1)
                continue
            line.popleft()
            self._held -= 1
            self._dequeued(entry)
            batch.append(entry)
            longest, stuck = wider, 0
            if line:
                lines.rotate(-1)  # its next job waits for the other lines' turns
            else:
                lines.popleft()
        self.metrics.queue_size.set(self._live)
        return batch

    async def _gather(self, deadline: float) -> str:
        """Wait for company until the batch is full ("full") or until `deadline` ("timeout")."""
        while not self._full():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping:
                return "timeout"
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        return "full"

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._wide or len(self._passes) >= self.lanes:  # no lane free: wait until a pass ends
                self._lane_free.clear()  # (calls queued meanwhile do not wake the worker: they wait for a lane)
                await self._lane_free.wait()
                continue
            oldest = self._oldest()
            if oldest is None:
                self._lines.clear()
                self._held = 0
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._company >= COMPANY_LIKELY:
                trigger = await self._gather(oldest + self.max_wait)  # "full" at once if it already is
            else:  # calls have lately been coming apart: none is likely within max_wait
                trigger = "full" if self._full() else "sparse"
            # With several lanes, each batch takes its share of the work in hand (queued and running): a lane that
            # comes free beside a small pass does not take the whole queue, leaving the other lane little to do.
            share = -(-self._in_hand() // self.lanes)
            batch = self._take(min(self.max_batch_sequences, share))
            if not batch:
                continue
            # Nothing else to do: the batch runs alone, wide (a lone client is not slowed by lanes).
            self._wide = wide = self.lane_width is not None and not self._passes and not self._live
            busy = {lane for lane, _ in self._passes.values()}
            lane = next(i for i in range(self.lanes) if i not in busy)
            task = loop.create_task(self._pass(batch, trigger, wide, lane))
            self._passes[task] = (lane, len(batch))
            task.add_done_callback(self._passed)

    def _passed(self, task: asyncio.Task) -> None:
        self._passes.pop(task, None)
        self._wide = False
        self._lane_free.set()

    def _in_lane(self, wide: bool, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` in a lane's thread, told first how wide its pass runs."""
        if self.lane_width is not None:
            self.lane_width(wide)
        return work(*args)

    async def _pass(self, batch: list[_Entry[J]], trigger: str, wide: bool, lane: int) -> None:
        """One forward pass in a lane's thread; each entry's future gets its result or the batch's exception."""
        batch.sort(key=lambda e: e.job.num_tokens, reverse=True)
        started = time.monotonic()
        for entry in batch:
            self.metrics.queue_wait.observe(started - entry.enqueued)
            if entry.on_batch is not None:
                entry.on_batch(len(batch))
        jobs = [e.job for e in batch]
        try:
            executor = self._executors[lane]
            results = await asyncio.get_running_loop().run_in_executor(
                executor, self._in_lane, wide, self.run_batch, jobs
            )
            if len(results) != len(jobs):
                raise RuntimeError(f"the forward pass gave {len(results)} results for {len(jobs)} jobs")
        except Exception as e:  # the batch fails, the engine does not
            # Without its traceback: each request of the batch answers 500 and logs it, with its request id.
            log.error("forward pass failed for a batch of %d sequences: %r", len(batch), e)
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(e)
            return
        finally:
            m = self.metrics
            m.batch_duration.observe(time.monotonic() - started)
            m.batch_size.observe(len(batch))
            m.batch_tokens.observe(len(batch) * jobs[0].num_tokens)
            m.batches.labels(trigger).inc()
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)


def _retrieve(future: asyncio.Future) -> None:
    """Mark the outcome of an abandoned future as seen, so that asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()
