"""Giving freed memory back to the system: after a burst of large requests (megabyte bodies, thousands of
normalised words) Python frees the objects, but glibc's allocator keeps the pages, so the server's resident
memory stays at its peak. `malloc_trim(0)` returns them; the lifespan runs it every `TRIM_INTERVAL_S` in a
worker thread (measured in docs/reliability.md: the hostile soak's RSS after, with and without it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

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
