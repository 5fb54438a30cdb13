"""service.engine.BatchingEngine on its own, with a fake forward pass that records what it was given, over jobs that
are only lists of ids: the engine knows nothing else about a job."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from service_helpers import parse_metrics

from service.engine import BatchingEngine, ClientGoneError, EngineStoppedError, EngineTimeoutError, QueueFullError
from service.metrics import Metrics
from service.settings import Settings


@dataclass(frozen=True)
class Seq:
    """A job of the fake forward pass: a list of ids."""

    ids: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


def jobs(sequences: list[list[int]]) -> list[Seq]:
    return [Seq(ids) for ids in sequences]


class FakeForward:
    """`run_batch`: records each batch (lists of ids) and answers sum(ids) per item; fails on a poisoned item;
    takes `seconds` per batch."""

    def __init__(self, poison: int | None = None, seconds: float = 0.0) -> None:
        self.batches: list[list[list[int]]] = []
        self.poison = poison
        self.seconds = seconds  # each batch takes this long
        self.threads: set[str] = set()

    def __call__(self, items: list[Seq]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([list(it.ids) for it in items])
        time.sleep(self.duration(items))
        if self.poison is not None and any(self.poison in it.ids for it in items):
            raise RuntimeError("poisoned batch")
        return [sum(it.ids) for it in items]

    def duration(self, items: list[Seq]) -> float:
        return self.seconds


def run_engine(
    fake: FakeForward,
    body: Callable[[BatchingEngine], Awaitable[Any]],
    lane_width: Callable[[bool], None] | None = None,
    **options: Any,
) -> tuple[Any, Metrics]:
    metrics = Metrics()

    async def main() -> Any:
        engine = BatchingEngine(fake, metrics, Settings(**options), lane_width)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()

    return asyncio.run(main()), metrics


def seqs(*lengths: int, start: int = 1) -> list[list[int]]:
    """Distinct sequences of the given lengths (each value tells which sequence it came from)."""
    return [[start + i] * n for i, n in enumerate(lengths)]


def test_items_are_sorted_by_length_and_each_future_gets_its_own_result() -> None:
    fake = FakeForward()
    sequences = seqs(3, 1, 5, 2, 4)

    async def body(engine):
        return await asyncio.gather(*engine.submit(jobs(sequences)))

    results, _ = run_engine(fake, body, max_batch_sequences=5, max_wait_ms=5000)
    assert [[len(ids) for ids in batch] for batch in fake.batches] == [[5, 4, 3, 2, 1]]
    assert results == [sum(s) for s in sequences]  # input order, despite the sort
    assert fake.threads and "MainThread" not in fake.threads  # off the event loop


def test_a_failing_batch_sets_exceptions_on_its_own_futures_only() -> None:
    fake = FakeForward(poison=99)
    sequences = [[99, 1], [2], [3, 3, 3], [4]]

    async def body(engine):
        futures = engine.submit(jobs(sequences))
        await asyncio.wait(futures)
        later = await asyncio.gather(*engine.submit(jobs([[5, 5]])))
        return futures, later, engine.running

    (futures, later, running), metrics = run_engine(fake, body, max_batch_sequences=2, max_wait_ms=50)
    assert len(fake.batches) == 3
    for f in futures[:2]:
        assert isinstance(f.exception(), RuntimeError)
    assert [f.result() for f in futures[2:]] == [9, 4]
    assert later == [10] and running  # the worker carried on
    samples = parse_metrics(metrics.render().decode())
    assert samples[("lmserve_batch_size_count", frozenset())] == 3


def test_max_batch_sequences_is_respected() -> None:
    fake = FakeForward()

    async def body(engine):
        return await asyncio.gather(*engine.submit(jobs(seqs(*[2] * 10))))

    results, metrics = run_engine(fake, body, max_batch_sequences=3, max_wait_ms=10)
    assert [len(b) for b in fake.batches] == [3, 3, 3, 1]
    assert results == [2 * (i + 1) for i in range(10)]
    samples = parse_metrics(metrics.render().decode())
    assert samples[("lmserve_batches_total", frozenset({("trigger", "full")}))] == 3
    assert samples[("lmserve_batches_total", frozenset({("trigger", "timeout")}))] == 1


def test_max_batch_tokens_is_respected_and_a_long_item_runs_alone() -> None:
    fake = FakeForward()

    async def body(engine):
        return await asyncio.gather(*engine.submit(jobs(seqs(4, 4, 4, 25, 4))))

    run_engine(fake, body, max_batch_tokens=10, max_wait_ms=10)
    assert [[len(ids) for ids in b] for b in fake.batches] == [[4, 4], [4], [25], [4]]
    for batch in fake.batches:  # padded: rows x longest
        assert len(batch) == 1 or len(batch) * max(map(len, batch)) <= 10


def test_the_token_budget_counts_padding() -> None:
    """A batch costs rows x longest: a 9-token job and three 1-token jobs are 36 padded tokens, not 12."""
    fake = FakeForward()

    async def body(engine):
        return await asyncio.gather(*engine.submit(jobs(seqs(9, 1, 1, 1))))

    run_engine(fake, body, max_batch_tokens=20, max_wait_ms=10)
    assert [[len(ids) for ids in b] for b in fake.batches] == [[9, 1], [1, 1]]


def test_a_small_call_behind_a_large_one_rides_in_the_next_batch() -> None:
    """Fair between calls: one job from each call's line in turn, so a call of one job queued behind a call of
    20 is in the first batch, not after the 20; and a call that arrives while a batch runs is in the next."""
    fake = FakeForward(seconds=0.1)

    async def body(engine):
        large = engine.submit(jobs(seqs(*[2] * 20)))
        small = engine.submit(jobs([[100]]))
        await asyncio.sleep(0.03)  # the first batch is running (the queue held a full one)
        later = engine.submit(jobs([[200], [201]]))
        return await asyncio.gather(*small, *later, *large)

    run_engine(fake, body, max_batch_sequences=4, max_wait_ms=20)
    firsts = [ids[0] for ids in fake.batches[0]]
    assert 100 in firsts and len(firsts) == 4
    assert [200] in fake.batches[1] and [201] in fake.batches[1]  # both of the later call's jobs, in the next
    # The large call was not starved either: its jobs ran in every batch, in its order.
    large_order = [ids[0] for b in fake.batches for ids in sorted(b, key=lambda ids: ids[0]) if ids[0] <= 20]
    assert sorted(large_order) == list(range(1, 21))


def test_a_job_that_does_not_fit_the_budget_lets_other_calls_jobs_past() -> None:
    """A call's next job too long for the batch so far waits for a later batch; other calls' short jobs still
    fill this one."""
    fake = FakeForward()

    async def body(engine):
        a = engine.submit(jobs([[1], [2] * 8]))
        b = engine.submit(jobs([[3], [4], [5]]))
        return await asyncio.gather(*a, *b)

    run_engine(fake, body, max_batch_tokens=4, max_wait_ms=10)
    assert sorted(fake.batches[0]) == [[1], [3], [4], [5]]
    assert fake.batches[1] == [[2] * 8]


def lone_item_wait(max_wait_ms: float) -> float:
    """Seconds from submitting one item, alone, to its result; its batch must have closed on the wait."""
    fake = FakeForward()

    async def body(engine):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*engine.submit(jobs([[1]])))
        return loop.time() - t0

    waited, metrics = run_engine(fake, body, max_batch_sequences=64, max_wait_ms=max_wait_ms)
    samples = parse_metrics(metrics.render().decode())
    assert samples[("lmserve_batches_total", frozenset({("trigger", "timeout")}))] == 1
    return waited


def test_a_lone_item_waits_max_wait_ms_for_company_then_runs() -> None:
    """Not less than max_wait_ms, and not much more: the bound leaves 0.9 s for a busy machine, yet a wait of
    10 x max_wait_ms (milliseconds read as centiseconds) fails it, and so does a wait that ignores the setting."""
    short = lone_item_wait(100)
    assert 0.099 <= short < 1.0
    long = lone_item_wait(400)
    assert 0.399 <= long < 1.3


def one_by_one(calls: int, apart_s: float, max_wait_ms: float) -> tuple[list[float], dict]:
    """`calls` calls of one item each, one after the other, `apart_s` seconds between a result and the next
    call (a single client, as at concurrency 1); the seconds each waited for its result, and the metrics."""
    fake = FakeForward()

    async def body(engine):
        loop = asyncio.get_running_loop()
        waits = []
        for i in range(calls):
            await asyncio.sleep(apart_s)
            t0 = loop.time()
            await asyncio.gather(*engine.submit(jobs([[i + 1]])))
            waits.append(loop.time() - t0)
        return waits

    waits, metrics = run_engine(fake, body, max_batch_sequences=64, max_wait_ms=max_wait_ms)
    return waits, parse_metrics(metrics.render().decode())


def batches_by(samples: dict, trigger: str) -> float:
    return samples[("lmserve_batches_total", frozenset({("trigger", trigger)}))]


def test_calls_that_come_apart_stop_waiting_for_company() -> None:
    """A client alone (each call more than max_wait_ms after the last) pays the wait for company only until the
    engine has seen calls come apart (the first several); after that its calls run at once ("sparse")."""
    waits, samples = one_by_one(calls=20, apart_s=0.12, max_wait_ms=100)
    assert min(waits[:3]) >= 0.099  # company is expected until calls are seen to come apart
    assert max(waits[-8:]) < 0.09  # then none is waited for
    assert batches_by(samples, "sparse") >= 8 and batches_by(samples, "timeout") >= 3
    assert batches_by(samples, "sparse") + batches_by(samples, "timeout") == 20


def test_a_client_alone_calling_again_at_once_is_no_company_to_itself() -> None:
    """A client alone whose answers come quicker than max_wait_ms calls again within max_wait_ms of its last call,
    but always to an idle engine: after its first few calls, none waits for company (before, each waited the
    whole max_wait_ms: `/next-word` at one client answered 394 requests/s against 516 without the wait)."""
    waits, samples = one_by_one(calls=20, apart_s=0.005, max_wait_ms=200)
    assert min(waits[:3]) >= 0.199  # company is expected until calls are seen to come alone
    assert max(waits[-8:]) < 0.15  # then none is waited for
    assert batches_by(samples, "sparse") >= 8


def test_calls_that_come_close_together_still_wait_for_company() -> None:
    """Calls within max_wait_ms of each other keep the wait: a second caller's job, sent 50 ms after the first
    of each pair, rides in the first one's batch, every time."""
    fake = FakeForward()

    async def body(engine):
        for i in range(12):
            first = asyncio.gather(*engine.submit(jobs([[2 * i + 1]])))
            await asyncio.sleep(0.05)
            second = asyncio.gather(*engine.submit(jobs([[2 * i + 2]])))
            await asyncio.gather(first, second)
            await asyncio.sleep(0.01)

    run_engine(fake, body, max_batch_sequences=2, max_wait_ms=300)
    assert [len(batch) for batch in fake.batches] == [2] * 12


def test_queue_full_is_all_or_nothing() -> None:
    fake = FakeForward()

    async def body(engine):
        first = engine.submit(jobs(seqs(1, 1)))
        with pytest.raises(QueueFullError):
            engine.submit(jobs(seqs(1, 1, start=10)))
        size_after_refusal = engine.queue_size()
        third = engine.submit(jobs(seqs(1, start=20)))  # exactly fills the queue
        with pytest.raises(QueueFullError):
            engine.submit(jobs([[30]]))
        return await asyncio.gather(*first, *third), size_after_refusal

    (results, size_after_refusal), metrics = run_engine(fake, body, max_queue=3, max_wait_ms=50)
    assert size_after_refusal == 2
    assert results == [1, 2, 20]
    assert sorted(x for b in fake.batches for ids in b for x in ids) == [1, 2, 20]
    samples = parse_metrics(metrics.render().decode())
    assert samples[("lmserve_queue_size", frozenset())] == 0


def test_submit_needs_a_running_engine() -> None:
    async def main():
        engine = BatchingEngine(FakeForward(), Metrics(), Settings())
        with pytest.raises(EngineStoppedError):
            engine.submit(jobs([[1]]))
        await engine.start()
        assert engine.running
        await engine.stop()
        assert not engine.running
        with pytest.raises(EngineStoppedError):
            engine.submit(jobs([[1]]))

    asyncio.run(main())


def test_stop_finishes_what_is_queued() -> None:
    fake = FakeForward()

    async def main():
        engine = BatchingEngine(fake, Metrics(), Settings(max_wait_ms=10_000))
        await engine.start()
        futures = engine.submit(jobs(seqs(2, 3)))
        await asyncio.sleep(0)
        await asyncio.wait_for(engine.stop(), 5)
        return [f.result() for f in futures]

    assert asyncio.run(main()) == [2, 6]


def test_cancelled_items_are_not_computed() -> None:
    fake = FakeForward()

    async def body(engine):
        futures = engine.submit(jobs(seqs(1, 1, 1)))
        futures[1].cancel()
        return await asyncio.gather(futures[0], futures[2])

    results, _ = run_engine(fake, body, max_wait_ms=20)
    assert results == [1, 3]
    assert fake.batches == [[[1], [3]]]


def test_cancelled_items_free_their_place_in_the_queue_at_once() -> None:
    """A client that leaves (or a request that times out) must not hold queue places until the worker gets to
    its items: a new request fits as soon as the old one is cancelled."""
    fake = FakeForward()

    async def body(engine):
        old = engine.submit(jobs(seqs(1, 1, 1)))  # fills the queue (the worker waits up to 60 s for more)
        with pytest.raises(QueueFullError):
            engine.submit(jobs([[9]]))
        for f in old:
            f.cancel()
        await asyncio.sleep(0)  # the cancellation callbacks run
        size = engine.queue_size()
        new = engine.submit(jobs(seqs(1, 1, 1, start=10)))
        with pytest.raises(QueueFullError):
            engine.submit(jobs([[9]]))
        return size, await asyncio.wait_for(asyncio.gather(*new), 5)

    (size, results), metrics = run_engine(fake, body, max_queue=3, max_batch_sequences=3, max_wait_ms=10_000)
    assert size == 0
    assert results == [10, 11, 12]
    assert fake.batches == [[[10], [11], [12]]]  # the cancelled ones were never computed
    assert parse_metrics(metrics.render().decode())[("lmserve_queue_size", frozenset())] == 0


# --- run: the entry point (timeout, a caller that goes away, admission) ----------------------------------------


def test_run_returns_the_results_in_order_and_tells_the_batch_size() -> None:
    fake = FakeForward()
    sizes: list[int] = []

    async def body(engine):
        return await engine.run(jobs(seqs(1, 3, 2)), on_batch=sizes.append)

    results, _ = run_engine(fake, body, max_wait_ms=20)
    assert results == [1, 6, 6]
    assert sizes == [3, 3, 3]


def test_run_past_its_timeout_drops_the_jobs() -> None:
    fake = FakeForward()

    async def body(engine):
        with pytest.raises(EngineTimeoutError, match=r"0\.05 s"):
            await engine.run(jobs(seqs(1, 1)), timeout=0.05)
        await asyncio.sleep(0)  # the cancellation callbacks run
        return engine.queue_size()

    size, _ = run_engine(fake, body, max_wait_ms=10_000)
    assert size == 0
    assert fake.batches == []  # never computed


def test_run_for_a_caller_that_went_away_drops_the_jobs() -> None:
    fake = FakeForward()
    checks = 0

    def gone() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 2

    async def body(engine):
        with pytest.raises(ClientGoneError):
            await engine.run(jobs(seqs(1)), timeout=5, is_disconnected=gone)
        await asyncio.sleep(0)  # the cancellation callbacks run
        return engine.queue_size()

    size, _ = run_engine(fake, body, max_wait_ms=10_000)
    assert size == 0 and fake.batches == [] and checks == 2


def watchers() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "batching-engine-clients"]


def test_the_watcher_asks_each_waiting_calls_client_and_ends_only_the_calls_of_those_that_went() -> None:
    # Three calls wait at once (a batching wait longer than the test): one client goes after two questions, one
    # stays (its call ends at its timeout), and asking the third fails (its call fails with that error). Each
    # call's jobs leave the queue, none is computed, and once no call waits the watcher is gone too.
    fake = FakeForward()
    asked = {"gone": 0, "stays": 0}

    def gone() -> bool:
        asked["gone"] += 1
        return asked["gone"] >= 2

    def stays() -> bool:
        asked["stays"] += 1
        return False

    def broken() -> bool:
        raise OSError("the channel broke")

    async def body(engine):
        calls = [
            engine.run(jobs(seqs(1, 2)), timeout=5, is_disconnected=gone),
            engine.run(jobs(seqs(3)), timeout=0.5, is_disconnected=stays),
            engine.run(jobs(seqs(4, 5, 6)), timeout=5, is_disconnected=broken),
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0.25)  # past the watcher's next look
        return outcomes, engine.queue_size(), watchers()

    (outcomes, size, left), _ = run_engine(fake, body, max_wait_ms=10_000)
    assert [type(o) for o in outcomes] == [ClientGoneError, EngineTimeoutError, OSError]
    assert asked["gone"] == 2 and asked["stays"] >= 3  # asked about every 0.1 s until its timeout
    assert size == 0 and fake.batches == [] and left == []


def test_a_watched_call_answered_in_time_gets_its_results_and_leaves_nothing_behind() -> None:
    fake = FakeForward()

    async def body(engine):
        one = await engine.run(jobs(seqs(4)), timeout=0.3, is_disconnected=lambda: False)
        several = await engine.run(jobs(seqs(2, 3)), timeout=0.3, is_disconnected=lambda: False)
        await asyncio.sleep(0.5)  # past the timeouts and the watcher's next look
        return one, several, engine.queue_size(), watchers()

    (one, several, size, left), _ = run_engine(fake, body, max_wait_ms=1)
    assert one == [4] and several == [sum(s) for s in seqs(2, 3)] and size == 0 and left == []


def test_admit_refuses_slowly_what_does_not_fit_and_lets_the_rest_through() -> None:
    fake = FakeForward()

    async def body(engine):
        loop = asyncio.get_running_loop()
        queued = engine.submit(jobs(seqs(1, 1)))
        await engine.admit(1)  # fits: no wait, no error
        t0 = loop.time()
        with pytest.raises(QueueFullError):
            await engine.admit(2)
        waited = loop.time() - t0
        await asyncio.gather(*queued)
        return waited

    waited, _ = run_engine(fake, body, max_queue=3, busy_delay_ms=100, max_wait_ms=20)
    assert waited >= 0.09


def test_a_cancelled_caller_drops_its_jobs() -> None:
    # The route's task cancelled while it waits (its server shutting down, an outer timeout): nobody will read the
    # results, so its jobs leave the queue and are never computed.
    fake = FakeForward()

    async def body(engine):
        call = asyncio.ensure_future(engine.run(jobs(seqs(1, 1)), timeout=30))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0)  # the cancellation callbacks run
        return engine.queue_size()

    size, _ = run_engine(fake, body, max_wait_ms=10_000)
    assert size == 0 and fake.batches == []


class LaneForward(FakeForward):
    """A FakeForward that also records, for each pass, when it ran, in which thread, and what `lane_width` told
    that thread last (True: alone, with every thread)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds=seconds)
        self.passes: list[tuple[float, float, str, bool | None, int]] = []  # start, end, thread, wide, size
        self.width = threading.local()

    def lane_width(self, wide: bool) -> None:
        self.width.wide = wide

    def __call__(self, items: list[Seq]) -> list[int]:
        start = time.monotonic()
        results = super().__call__(items)
        wide = getattr(self.width, "wide", None)
        self.passes.append((start, time.monotonic(), threading.current_thread().name, wide, len(items)))
        return results


def overlapping(passes: list[tuple[float, float, str, bool | None, int]]) -> int:
    """The most passes that ran at the same moment."""
    edges = sorted([(p[0], 1) for p in passes] + [(p[1], -1) for p in passes])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_lanes_run_batches_side_by_side_and_share_the_queue() -> None:
    """Two lanes, eight calls of one job at once: the two free lanes split the queue (four jobs each) and run at
    the same time, in two threads, each told it runs beside another (narrow); every call gets its own result."""
    fake = LaneForward(seconds=0.3)

    async def body(engine):
        return await asyncio.gather(*(engine.run(jobs([[i]])) for i in range(1, 9)))

    results, _ = run_engine(fake, body, fake.lane_width, forward_lanes=2, max_wait_ms=50)
    assert results == [[i] for i in range(1, 9)]
    assert sorted(p[4] for p in fake.passes) == [4, 4]
    assert overlapping(fake.passes) == 2
    assert len({p[2] for p in fake.passes}) == 2
    assert [p[3] for p in fake.passes] == [False, False]


class SlowJobs(LaneForward):
    """A LaneForward whose pass takes `seconds`, or `slow_s` when it holds a job of an id from 100 up."""

    def __init__(self, seconds: float, slow_s: float) -> None:
        super().__init__(seconds=seconds)
        self.slow_s = slow_s

    def duration(self, items: list[Seq]) -> float:
        return self.slow_s if any(i >= 100 for it in items for i in it.ids) else self.seconds


def test_a_lane_that_comes_free_beside_a_small_pass_takes_its_share_not_the_whole_queue() -> None:
    """A slow pass of one job runs in one lane; eight calls then queue while the other lane is free. That lane
    takes its share of the work in hand (nine jobs over two lanes: five), not all eight, so that when both lanes
    run again their batches are even; taking all of the queue had one lane carry nearly every client of a busy
    server in one large pass while the other cycled a few in small ones."""
    fake = SlowJobs(seconds=0.05, slow_s=0.8)

    async def body(engine):
        first = asyncio.gather(engine.run(jobs([[100]])), engine.run(jobs([[1]])))
        await asyncio.sleep(0.15)  # the fast one has ended; the slow one runs
        rest = await asyncio.gather(*(engine.run(jobs([[i]])) for i in range(2, 10)))
        return [*await first, *rest]

    results, _ = run_engine(fake, body, fake.lane_width, forward_lanes=2, max_wait_ms=20)
    assert results == [[100], [1]] + [[i] for i in range(2, 10)]
    assert [len(b) for b in fake.batches] == [1, 1, 5, 2, 1]
    assert overlapping(fake.passes) == 2


def test_one_lane_runs_one_batch_at_a_time() -> None:
    fake = LaneForward(seconds=0.1)

    async def body(engine):
        return await asyncio.gather(*(engine.run(jobs([[i]])) for i in range(1, 9)))

    results, _ = run_engine(fake, body, fake.lane_width, max_batch_sequences=2, max_wait_ms=50)
    assert results == [[i] for i in range(1, 9)]
    assert overlapping(fake.passes) == 1
    # One lane is told its width before each pass too (the runner sets the lane thread's torch threads: with one
    # lane, all of them either way): alone only once nothing else is queued.
    assert [p[3] for p in fake.passes] == [False, False, False, True]


def test_a_batch_with_nothing_else_queued_runs_alone_on_every_thread() -> None:
    """A lone call runs wide (so a lane costs a single client nothing); while it runs, a call that comes in
    waits for it instead of starting a narrow pass beside it, then runs wide in turn."""
    fake = LaneForward(seconds=0.3)

    async def body(engine):
        first = asyncio.ensure_future(engine.run(jobs([[1]])))
        await asyncio.sleep(0.1)  # the first pass is running
        second = await engine.run(jobs([[2]]))
        return [await first, second]

    results, _ = run_engine(fake, body, fake.lane_width, forward_lanes=2, max_wait_ms=10)
    assert results == [[1], [2]]
    assert [p[3] for p in fake.passes] == [True, True]
    assert overlapping(fake.passes) == 1


def test_a_lone_clients_passes_all_run_in_the_first_lanes_thread() -> None:
    """After a busy spell (both lanes' threads at work), one call after another: each pass runs wide, and always
    in the same thread (the first free lane's), so that one OpenMP team serves a lone client; a pool of two
    threads would have them take turns, each waking a team of its own."""
    fake = LaneForward(seconds=0.02)

    async def body(engine):
        together = await asyncio.gather(*(engine.run(jobs([[i]])) for i in range(1, 9)))
        alone = [await engine.run(jobs([[i]])) for i in range(9, 15)]
        return together + alone

    results, _ = run_engine(fake, body, fake.lane_width, forward_lanes=2, max_wait_ms=10)
    assert results == [[i] for i in range(1, 15)]
    busy, lone = fake.passes[:-6], fake.passes[-6:]
    assert len({p[2] for p in busy}) == 2
    assert [(p[2], p[3]) for p in lone] == [(lone[0][2], True)] * 6


def test_stop_waits_for_every_lane() -> None:
    fake = LaneForward(seconds=0.2)

    async def main():
        engine = BatchingEngine(fake, Metrics(), Settings(forward_lanes=2, max_wait_ms=10), fake.lane_width)
        await engine.start()
        futures = engine.submit(jobs(seqs(2, 3, 4, 5)))
        await asyncio.sleep(0.05)  # both lanes are running
        await asyncio.wait_for(engine.stop(), 5)
        return [f.result() for f in futures]

    assert asyncio.run(main()) == [2, 6, 12, 20]
    assert overlapping(fake.passes) == 2


def test_a_forward_pass_that_returns_too_few_results_fails_its_batch_and_the_engine_carries_on() -> None:
    calls = []

    def short(items: list[Seq]) -> list[int]:
        calls.append(len(items))
        return [sum(it.ids) for it in items][: 1 if len(calls) == 1 else None]

    async def body(engine):
        with pytest.raises(RuntimeError, match="gave 1 results for 2 jobs"):
            await asyncio.wait_for(engine.run(jobs(seqs(2, 3))), 5)
        return await asyncio.wait_for(engine.run(jobs(seqs(4))), 5)

    result, _ = run_engine(short, body, max_wait_ms=10)  # type: ignore[arg-type]
    assert result == [4] and calls == [2, 1]
