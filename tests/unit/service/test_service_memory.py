"""The server's heap: freed memory goes back to the system (after a burst of large requests the RSS comes back
down); what startup built is frozen out of the garbage collector's reach, which runs less often and still
collects what requests leave."""

from __future__ import annotations

import gc
import os
import weakref

import pytest

from benchmarks.common import rss_mib
from service.memory import MALLOC_TRIM, release_memory, steady_heap


@pytest.mark.skipif(MALLOC_TRIM is None, reason="needs glibc's malloc_trim")
def test_release_memory_gives_freed_pages_back() -> None:
    release_memory()
    start = rss_mib(os.getpid())
    # What a large request leaves: many malloc'd blocks (larger than Python's small-object pools take), freed;
    # the last one keeps the heap's top in use, so only a trim can give the pages back.
    words = [bytearray(1024) for _ in range(100_000)]
    keep = bytearray(1024)
    peak = rss_mib(os.getpid())
    del words
    assert rss_mib(os.getpid()) - start > (peak - start) / 2, "the allocator gave the memory back on its own"
    assert release_memory()
    assert rss_mib(os.getpid()) - start < (peak - start) / 2
    assert keep


def test_the_steady_heap_freezes_what_is_alive_and_collects_less_often() -> None:
    saved = gc.get_threshold()
    with steady_heap(12_345):
        assert gc.get_threshold() == (12_345, *saved[1:])
        assert gc.get_freeze_count() > 0
        before = gc.get_count()[0]
        for _ in range(1000):  # far fewer than the threshold: no collection of the first generation comes
            Cycle()
        assert gc.get_count()[0] >= before + 900
    assert gc.get_threshold() == saved
    assert gc.get_freeze_count() == 0


def test_the_steady_heap_still_collects_garbage_cycles_made_later() -> None:
    with steady_heap(500):
        collected = []
        for _ in range(5000):  # ten thresholds' worth of cycles: the collector runs on its own
            Cycle().note_when_collected(collected)
        assert len(collected) > 4000
        gc.collect()
        assert len(collected) == 5000


def test_a_steady_heap_of_threshold_0_leaves_the_collector_alone() -> None:
    saved = gc.get_threshold()
    with steady_heap(0):
        assert gc.get_threshold() == saved
        assert gc.get_freeze_count() == 0


def test_the_service_runs_on_the_steady_heap_and_gives_the_collector_back(serve) -> None:
    saved = gc.get_threshold()
    with serve(gc_threshold=7_777) as client:
        assert client.post("/score", json={"text": "the cat"}).status_code == 200
        assert gc.get_threshold()[0] == 7_777
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == saved
    assert gc.get_freeze_count() == 0
    with serve(gc_threshold=0):
        assert gc.get_threshold() == saved
        assert gc.get_freeze_count() == 0


class Cycle:
    """An object in a reference cycle with itself: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self

    def note_when_collected(self, collected: list) -> None:
        weakref.finalize(self, collected.append, 1)
