"""Giving freed memory back to the system: after a burst of large requests (megabyte bodies, thousands of
normalised words) Python frees the objects, but glibc's allocator keeps the pages, so the server's resident
memory stays at its peak. `malloc_trim(0)` returns them; the lifespan runs it every `TRIM_INTERVAL_S` in a
worker thread (measured in docs/reliability.md: the hostile soak's RSS after, with and without it).

And large blocks are kept out of the heap: glibc serves a block of 128 KiB or more (a long sequence's
activations, a big string) from its own mapping, returned when freed, but raises that threshold after each
such free, up to 32 MiB, so that later large blocks come from the heap and leave holes there that trimming
cannot return. `fix_mmap_threshold()` pins the threshold (as setting `MALLOC_MMAP_THRESHOLD_` would).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

TRIM_INTERVAL_S = 10.0

log = logging.getLogger("service.memory")


MMAP_THRESHOLD = 128 * 1024  # glibc's initial value
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _libc_function(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return None


MALLOC_TRIM = _libc_function("malloc_trim")
MALLOPT = _libc_function("mallopt")


def fix_mmap_threshold() -> bool:
    """Blocks of MMAP_THRESHOLD or more from their own mappings, always; False where there is no glibc."""
    return MALLOPT is not None and MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


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
