"""Freed memory goes back to the system: after a burst of large requests the server's RSS comes back down."""

from __future__ import annotations

import os

import pytest

from benchmarks.common import rss_mib
from service.memory import MALLOC_TRIM, release_memory


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
