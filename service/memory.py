"""The server's heap: what the garbage collector looks at, and giving freed memory back to the system.

- `steady_heap`: what startup built (the model, the vocabulary, the app: about 200,000 objects that live as
  long as the process) is frozen out of the garbage collector's reach, and its first generation is collected
  less often. With Python's defaults a loaded server collected its youngest generation every 30 requests or so
  (about 1 ms each) and its whole heap every few thousand (about 170 ms, with the event loop and every thread's
  Python stopped): at 64 clients, `/next-word`'s p99 was 290-310 ms, 106-121 with the steady heap
  (docs/benchmarks.md, the optimisations table).
- `release_memory`: after a burst of large requests (megabyte bodies, thousands of normalised words) Python
  frees the objects, but glibc's allocator keeps the pages, so the server's resident memory stays at its peak.
  `malloc_trim(0)` returns them; the lifespan runs it every `TRIM_INTERVAL_S` in a worker thread (measured in
  docs/reliability.md: the hostile soak's RSS after, with and without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Iterator

TRIM_INTERVAL_S = 10.0

log = logging.getLogger("service.memory")


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


MALLOC_TRIM = _malloc_trim()


def release_memory() -> bool:
    """Return the allocator's free pages to the system; False where the C library has no malloc_trim."""
    if MALLOC_TRIM is None:
        return False
    MALLOC_TRIM(0)
    return True


async def release_memory_periodically(interval_s: float = TRIM_INTERVAL_S) -> None:
    """`release_memory()` every `interval_s`, off the event loop, until cancelled (the lifespan's end)."""
    if MALLOC_TRIM is None:
        log.info("no malloc_trim in this C library: freed memory stays with the allocator")
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(release_memory)


@contextlib.contextmanager
def steady_heap(gen0_threshold: int) -> Iterator[None]:
    """While inside: everything alive now is frozen (never traversed or collected by the garbage collector:
    gc.freeze) and the first generation is collected after `gen0_threshold` net new objects, not Python's 700.
    Garbage cycles are still collected, in bigger and rarer rounds; objects made later (requests, their
    results) are collected as before. On the way out, Python's settings come back. `gen0_threshold` 0: nothing
    changes."""
    if gen0_threshold <= 0:
        yield
        return
    saved = gc.get_threshold()
    gc.collect()  # what startup left as garbage goes now, not into the frozen part
    gc.freeze()
    gc.set_threshold(gen0_threshold, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()
