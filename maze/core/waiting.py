"""Waits that let Ctrl-C through.

A process-directed SIGINT (Ctrl-C in a terminal, ``kill -INT``, a notebook's
interrupt) goes to whichever thread of the process the kernel picks. Python's
handler always runs in the main thread, but only when that thread runs Python
code: a main thread blocked in an untimed ``Event.wait()`` or
``Condition.wait()`` is woken by the signal only when the kernel handed it
that thread. Handed to one of maze's own threads (the scheduler, the I/O
thread, the history's), the Ctrl-C would wait until the run's next message,
which may be minutes away. So the waits of a reader that Ctrl-C may stop are
cut into slices of at most ``SLICE_S``; between two slices the main thread
runs the handler that is due.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SLICE_S = 0.2   # the longest a due Ctrl-C waits; a waiting reader wakes this often, at no cost worth counting


def wait(until: Callable[[float], bool], timeout: float | None = None) -> bool:
    """``until(seconds)``, an ``Event``'s ``wait``, for up to ``timeout`` s, in slices.

    True once the event is set, False if ``timeout`` passed first. Not for a
    ``Condition``: a notify that comes as a slice times out can be lost; use
    :func:`wait_for` with the state the notify announces.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
        if until(max(0.0, left)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def wait_for(cond: Callable[[float], bool], predicate: Callable[[], bool], timeout: float | None = None) -> bool:
    """``Condition.wait_for(predicate, timeout)`` in slices; call it holding the condition's lock, as that."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not predicate():
        left = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
        if left <= 0:
            return predicate()
        cond(left)
    return True
