"""The model runner: a batch of jobs -> tensors -> one result per job. The engine's `run_batch`.

It owns the model on its device and dtype, splits a batch that runs out of device memory, keeps the prefix
state cache and refuses non-finite outputs. Each job type is a small dataclass with `ids` and `num_tokens`
(all the engine reads), and the runner has one handler per type: a new kind of work (say, one generation step
from a cached state) is a new job class and a new entry in `ModelRunner.handlers`.

Threads. torch's CPU kernels run on OpenMP (GNU libgomp), which gives every thread that starts a parallel region
a team of worker threads of its own, kept for the next region. Once the process holds more such threads than the
machine has CPUs, libgomp stops letting idle workers spin: each sleeps at once between two regions and has to be
woken for the next, and a small forward pass is hundreds of small regions (an LSTM step's matmul, its gates), so it
slows down by up to half (a one-sentence pass of `ptb-cpu` on two threads, 2 CPUs: 3.8 ms with one team in the
process, 6.6 ms with two; `python -m benchmarks.openmp_teams`). So only the forward lanes run torch on several
threads, and their teams together stay within the threads the runner was given (`lane_threads`, `wide_threads`);
every other thread (the event loop's, the loading and answering worker threads) runs torch on one
(`leave_threads_to_lanes`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from lm.checkpoint import Checkpoint
from lm.model import State, resolve_device
from lm.scoring import TokenScores, final_states, next_from_states, score_tokens
from service.metrics import Metrics
from service.prefix_cache import PrefixStateCache, prefix_hashes
from service.settings import Settings

log = logging.getLogger("service.runner")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ScoreJob:
    """Score every token of `ids` after the first; result: TokenScores (ranks too if `ranks`, and the `top` most
    probable words at each position if `top` > 0)."""

    ids: list[int]  # the priming <eos> first
    ranks: bool = False  # also each token's rank (costs one more pass over the logits)
    top: int = 0  # also the `top` most probable words at each position (OpenAI's top_logprobs)

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class NextJob:
    """The distribution of the token after `ids`; result: a float32 log-distribution Tensor (V,)."""

    ids: list[int]  # the priming <eos> first

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)
class StepJob:
    """Extend a stream by `ids`: from `state` (the stream's state so far), or, with no state, from the start
    (the prefix cache consulted, as for a NextJob). Result: a StepResult. Generation is one StepJob per word,
    `ids` the word just chosen and `state` the one its stream carries: one LSTM step, never the prefix again."""

    ids: list[int]
    state: State | None = None  # (h, c), each (L, H), on the runner's device

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)
class StepResult:
    """The next token's float32 log-distribution (V,) after a StepJob, and the state after its ids."""

    logdist: Tensor
    state: State


RunnerJob = ScoreJob | NextJob | StepJob
RunnerResult = TokenScores | Tensor | StepResult


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or infinity: reported as an error, never returned as a number."""


def leave_threads_to_lanes() -> None:
    """The calling thread runs torch on one thread from now on (no OpenMP team of its own), and so do threads
    started later until a lane sets its count: the service calls it in the event loop's thread before it loads
    anything, and in each worker thread it starts (`ThreadPoolExecutor(initializer=...)`)."""
    # torch sets a thread's count up on its first parallel call, to the count last set by any thread: asked
    # first, so that the one set here stays this thread's.
    torch.get_num_threads()
    torch.set_num_threads(1)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread in the calling thread for the block, and its count as before after it: work done
    before the lanes start (`python -m service` reading the checkpoint once to check it) leaves the thread no
    OpenMP team of its own."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def wide_threads(threads: int, lanes: int) -> int:
    """The torch threads of a pass that runs alone in the first of `lanes` lanes sharing `threads`: every thread
    the other lanes' teams leave (each keeps the team of its `threads // lanes`), so that all the teams, with the
    process's first thread, hold at most `threads` (the module's docstring): all of them on two cores, 3 of 4
    with two lanes, 9 of 16."""
    share = max(1, threads // lanes)
    return max(share, threads - (lanes - 1) * (share - 1))


def default_lanes(device: torch.device, threads: int) -> int:
    """Forward lanes when the settings leave it open: two on a CPU with two or more torch threads (under load two
    one-thread passes lose less to the event loop's interruptions than one two-thread pass, which stalls on both
    threads at every step when one loses its core), one on a GPU (one device, one stream) or with one thread."""
    return 2 if device.type == "cpu" and threads >= 2 else 1


class ModelRunner:
    """The checkpoint on its device and dtype; `run(jobs)` is the engine's forward pass."""

    def __init__(self, ckpt: Checkpoint, settings: Settings, metrics: Metrics | None = None) -> None:
        self.device = resolve_device(settings.device)
        # The threads its passes share: the settings' number, else the calling thread's torch count (torch's own
        # choice for the machine, where the caller has not set it). The runner sets nothing in the calling thread:
        # a pass sets its own count in its lane (`lane_width`).
        self.threads = settings.threads or torch.get_num_threads()
        self.lanes = settings.forward_lanes or default_lanes(self.device, self.threads)
        # A pass beside others in the engine's lanes (threads running one batch each) gets its share of the threads;
        # a pass alone, every thread the other lanes' teams leave (`wide_threads`).
        self.lane_threads = max(1, self.threads // self.lanes)
        self.wide_threads = wide_threads(self.threads, self.lanes)
        self._cache_lock = threading.Lock()  # lanes look up and fill the prefix cache from their own threads
        self.ckpt = ckpt
        self.vocab = ckpt.vocab
        self.dtype = DTYPES[settings.dtype]
        self.dtype_name = settings.dtype
        self.model = ckpt.model.to(self.device, self.dtype).eval()
        self.max_chunk_tokens = settings.max_chunk_tokens
        self.prefix_cache = PrefixStateCache(settings.prefix_cache_entries)
        self.metrics = metrics
        # One handler per job type: all the jobs of that type in a batch -> one result each, in order.
        self.handlers: dict[type, Callable[[list], list[RunnerResult]]] = {
            ScoreJob: self._score,
            NextJob: self._next,
            StepJob: self._step,
        }

    def lane_width(self, wide: bool) -> None:
        """The engine's word before a pass in one of its lanes: alone (`wide`: `wide_threads`) or beside other
        passes (the lane's share, `lane_threads`). torch's thread count belongs to the calling thread."""
        torch.set_num_threads(self.wide_threads if wide else self.lane_threads)

    def run(self, jobs: Sequence[RunnerJob]) -> list[RunnerResult]:
        """One result per job, in order: TokenScores for a ScoreJob, the next-token log-distribution (V,) for a
        NextJob.

        Out of device memory, the batch is split in halves and each half retried, down to single jobs.
        """
        try:
            return self._run(list(jobs))
        except torch.OutOfMemoryError:
            if len(jobs) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(jobs) // 2
            log.warning(
                "out of memory on a batch of %d sequences: retrying as %d + %d", len(jobs), half, len(jobs) - half
            )
            return self.run(jobs[:half]) + self.run(jobs[half:])

    def _run(self, jobs: list[RunnerJob]) -> list[RunnerResult]:
        results: list[RunnerResult | None] = [None] * len(jobs)
        for kind, handler in self.handlers.items():
            idx = [i for i, job in enumerate(jobs) if type(job) is kind]
            if idx:
                for i, result in zip(idx, handler([jobs[i] for i in idx]), strict=True):
                    results[i] = result
        done: list[RunnerResult] = []
        for job, r in zip(jobs, results, strict=True):
            if r is None:
                raise TypeError(f"the runner has no handler for {type(job).__name__}")
            # A sentence's float64 total is finite exactly when every log-probability in it is (no -inf, no NaN):
            # checked through it, so that it is computed here, in the lane, not on the event loop.
            if isinstance(r, TokenScores):
                finite = math.isfinite(r.total)
            else:
                finite = bool(torch.isfinite(r.logdist if isinstance(r, StepResult) else r).all())
            if not finite:
                raise NonFiniteOutputError("the model produced a non-finite log-probability")
            done.append(r)
        return done

    def _score(self, jobs: list[ScoreJob]) -> list[TokenScores]:
        ranks = any(job.ranks for job in jobs)
        top = max(job.top for job in jobs)
        scores = score_tokens(self.model, [job.ids for job in jobs], self.max_chunk_tokens, ranks=ranks, top=top)
        return [
            TokenScores(
                sc.logprobs,
                sc.ranks if job.ranks else None,
                sc.top_logprobs[:, : job.top] if job.top else None,
                sc.top_ids[:, : job.top] if job.top else None,
            )
            for job, sc in zip(jobs, scores, strict=True)
        ]

    def _next(self, jobs: list[NextJob]) -> list[Tensor]:
        """Next-token log-distributions; each prefix starts from the longest cached prefix's state."""
        h, _ = self._cached_states([job.ids for job in jobs])
        return list(next_from_states(self.model, h))

    def _step(self, jobs: list[StepJob]) -> list[StepResult]:
        """Each stream one step further: from its carried state, or (no state) from the prefix cache."""
        results: list[StepResult | None] = [None] * len(jobs)
        fresh = [i for i, job in enumerate(jobs) if job.state is None]
        carried = [i for i, job in enumerate(jobs) if job.state is not None]
        if fresh:
            states = self._cached_states([jobs[i].ids for i in fresh])
            self._step_results(results, fresh, states)
        if carried:
            states = final_states(
                self.model, [jobs[i].ids for i in carried], [jobs[i].state for i in carried], self.max_chunk_tokens
            )
            self._step_results(results, carried, states)
        return results  # type: ignore[return-value]

    def _step_results(self, results: list, idx: list[int], states: State) -> None:
        h, c = states
        dists = next_from_states(self.model, h)
        for col, i in enumerate(idx):
            results[i] = StepResult(dists[col], (h[:, col], c[:, col]))

    def _cached_states(self, sequences: list[list[int]]) -> State:
        """The states (h, c), each (L, B, H), after each sequence; each starts from the longest cached prefix's
        state, and is cached in turn."""
        cache = self.prefix_cache
        hashes = [prefix_hashes(ids) if cache.max_entries else None for ids in sequences]
        with self._cache_lock:
            found = [cache.longest(ids, h) for ids, h in zip(sequences, hashes, strict=True)]
        h, c = final_states(
            self.model,
            [ids[n:] for ids, (n, _) in zip(sequences, found, strict=True)],
            [state for _, state in found],
            self.max_chunk_tokens,
        )
        with self._cache_lock:
            for i, ids in enumerate(sequences):
                cache.put(ids, (h[:, i], c[:, i]), hashes[i])
        if self.metrics is not None and cache.max_entries:
            m = self.metrics
            hits = sum(1 for n, _ in found if n)
            m.prefix_cache_lookups.labels("hit").inc(hits)
            m.prefix_cache_lookups.labels("miss").inc(len(found) - hits)
            m.prefix_cache_tokens_reused.inc(sum(n for n, _ in found))
            m.prefix_cache_entries.set(len(cache))
        return h, c

    def warmup(self) -> None:
        """One pass of each kind, so the first request does not pay for lazy initialisation."""
        eos = self.vocab.eos_id
        score_tokens(self.model, [[eos, eos, eos]], self.max_chunk_tokens, ranks=True)
        h, _ = final_states(self.model, [[eos]], max_chunk_tokens=self.max_chunk_tokens)
        next_from_states(self.model, h)
