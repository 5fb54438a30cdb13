"""Ctrl-C (SIGINT) that always stops training.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread is at that moment, and an exception
raised inside a finalizer (a `__del__` or weakref callback, run when the garbage collector frees, say, the
figure of the learning curves drawn after every epoch) is printed and dropped: a plain KeyboardInterrupt can be
lost, and training runs on until something kills it. `stopping()` installs a handler that also remembers the
signal, and `check()`, called at every training step and after every epoch, raises it again there, where
nothing drops it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = threading.Event()


def _on_sigint(signum: int, frame: object) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def stopping() -> Iterator[None]:
    """SIGINT remembered while the block runs, Python's handler back after it. Only where Python's own handler
    is in place, in the main thread: a SIGINT that the process was started ignoring (a shell's background job)
    stays ignored."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    _requested.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def check() -> None:
    """KeyboardInterrupt if a SIGINT came while `stopping()`, even if the one it raised was dropped."""
    if _requested.is_set():
        raise KeyboardInterrupt
