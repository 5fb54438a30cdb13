"""Ctrl-C always stops training: a KeyboardInterrupt that Python drops (raised inside a finalizer) is raised
again at the next check."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from trainer import interrupt


@pytest.fixture(autouse=True)
def pythons_handler() -> Iterator[None]:
    """Python's own SIGINT handler in place, as in a trainer started from a shell (a test runner may have its
    own), and whatever was there back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class SignalsWhenFreed:
    """An object whose finalizer receives the SIGINT: Python raises the KeyboardInterrupt inside `__del__`, where
    it is printed and dropped (as when the garbage collector frees a figure or a progress bar mid-epoch)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at the next check of pending signals, still in here
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigint_dropped_in_a_finalizer_is_raised_at_the_next_check() -> None:
    with interrupt.stopping():
        interrupt.check()  # nothing yet
        obj = SignalsWhenFreed()
        del obj  # the KeyboardInterrupt is raised and dropped: we are still here
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    interrupt.check()  # forgotten once the block ends


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_without_the_handler_the_same_sigint_is_lost() -> None:
    """What `stopping()` is for: Python's own handler leaves nothing behind once the finalizer dropped it."""
    obj = SignalsWhenFreed()
    del obj
    interrupt.check()


def test_a_sigint_the_process_ignores_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.stopping():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_plain_sigint_stops_the_block_at_once() -> None:
    with pytest.raises(KeyboardInterrupt), interrupt.stopping():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        pytest.fail("the SIGINT did not stop the block")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
