"""The batching engine: many concurrent requests, one forward pass.

Every sequence a request brings becomes one `WorkItem` with its own future. One worker task gathers items
until the batch is full (by sequences or by tokens) or the oldest item has waited `max_wait_ms`, sorts them by
length so that little padding is computed, runs the batch in a worker thread (off the event loop) and resolves
each future. A batch that raises fails its own items only; the worker carries on. The queue is bounded and
`submit` refuses work it cannot queue before queuing any of it.
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
from typing import Any

from service.metrics import Metrics

log = logging.getLogger("service.engine")


class QueueFullError(Exception):
    """The queue cannot take the request's sequences now: answer 429."""


class EngineStoppedError(Exception):
    """The engine is not running (starting up or shutting down): answer 503."""


@dataclass
class WorkItem:
    kind: str  # "score": per-token log-probs; "next": the distribution of the next token
    ids: list[int]  # token ids, the priming <eos> first
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)
    on_batch: Callable[[int], None] | None = field(default=None, repr=False)  # told the size of its batch
    ranks: bool = False  # "score": also each token's rank (costs one more pass over the logits)
    queued: bool = field(default=False, repr=False)  # in the queue and counted in its size


class BatchingEngine:
    """Dynamic batching over `run_batch(items) -> results` (one result per item, same order)."""

    def __init__(
        self,
        run_batch: Callable[[list[WorkItem]], list[Any]],
        metrics: Metrics,
        max_batch_sequences: int = 64,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 2.0,
        max_queue: int = 2048,
    ) -> None:
        self.run_batch = run_batch
        self.metrics = metrics
        self.max_batch_sequences = max_batch_sequences
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: deque[WorkItem] = deque()
        # Sequences in the queue that someone still waits for: what the bound counts. An item cancelled while
        # queued (its client left, its request timed out) stops counting at once, though it leaves the deque
        # only when the worker reaches it (or when a purge clears out many such items).
        self._live = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        # One thread: torch parallelises inside the forward pass; a second pass would only compete.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lm-forward")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def queue_size(self) -> int:
        """Queued sequences still wanted (cancelled ones excluded)."""
        return self._live

    def has_room(self, n: int) -> bool:
        """Whether n more sequences fit the queue now."""
        return self._live + n <= self.max_queue

    def _dequeued(self, item: WorkItem) -> None:
        if item.queued:
            item.queued = False
            self._live -= 1

    def _on_done(self, future: asyncio.Future, item: WorkItem) -> None:
        """A queued item's future was cancelled: it no longer takes a place in the queue."""
        if future.cancelled() and item.queued:
            self._dequeued(item)
            self.metrics.queue_size.set(self._live)
            if len(self._queue) > 2 * self.max_queue:  # many dead items: drop them now, not when reached
                self._queue = deque(it for it in self._queue if it.queued)

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
        self._task = None
        self._executor.shutdown(wait=True)

    def submit(
        self,
        kind: str,
        sequences: Sequence[list[int]],
        on_batch: Callable[[int], None] | None = None,
        ranks: bool = False,
    ) -> list[asyncio.Future]:
        """Queue one item per sequence and return their futures; all or nothing.

        `on_batch(n)` is called, on the event loop, with the size of each batch one of the sequences runs in.
        """
        if not self.running or self._stopping:
            raise EngineStoppedError("the engine is not running")
        if not self.has_room(len(sequences)):
            raise QueueFullError(f"{self._live} sequences queued, {len(sequences)} more would pass {self.max_queue}")
        loop = asyncio.get_running_loop()
        futures = []
        now = time.monotonic()
        for ids in sequences:
            item = WorkItem(kind, ids, loop.create_future(), now, on_batch, ranks, queued=True)
            item.future.add_done_callback(lambda f, item=item: self._on_done(f, item))
            self._queue.append(item)
            futures.append(item.future)
        self._live += len(sequences)
        self.metrics.queue_size.set(self._live)
        self._wakeup.set()
        return futures

    def _full(self) -> bool:
        tokens = 0
        for n, item in enumerate(self._queue, start=1):
            tokens += len(item.ids)
            if n >= self.max_batch_sequences or tokens >= self.max_batch_tokens:
                return True
        return False

    def _take(self) -> list[WorkItem]:
        batch: list[WorkItem] = []
        tokens = 0
        while self._queue and len(batch) < self.max_batch_sequences:
            n = len(self._queue[0].ids)
            if batch and tokens + n > self.max_batch_tokens:
                break
            item = self._queue.popleft()
            if item.future.done():  # cancelled or timed out while queued: nobody wants it
                continue
            self._dequeued(item)
            batch.append(item)
            tokens += n
        self.metrics.queue_size.set(self._live)
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued + self.max_wait
            trigger = "full"
            while not self._full():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    trigger = "timeout"
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take()
            if not batch:
                continue
            batch.sort(key=lambda it: len(it.ids), reverse=True)
            started = time.monotonic()
            for item in batch:
                self.metrics.queue_wait.observe(started - item.enqueued)
                if item.on_batch is not None:
                    item.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, batch)
            except Exception as e:  # the batch fails, the engine does not
                log.exception("forward pass failed for a batch of %d sequences", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            finally:
                m = self.metrics
                m.batch_duration.observe(time.monotonic() - started)
                m.batch_size.observe(len(batch))
                m.batch_tokens.observe(len(batch) * len(batch[0].ids))
                m.batches.labels(trigger).inc()
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
