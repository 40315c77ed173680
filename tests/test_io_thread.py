"""The local backend's I/O thread serves every worker: no one worker may hold it up, and what it puts goes out.

To make a timing that is otherwise a matter of luck happen every time, most
tests hold the I/O thread inside a call's ``TaskStarted`` report (the thread
runs reports itself, with no lock held): meanwhile it reads nothing, and the
worker's frames pile up in its socket.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
import threading
import time
from concurrent.futures import Future

import pytest
from calls import call_taking_x

from maze.backends.local import LocalBackend
from maze.core.protocol import Failure, TaskOutcome, TaskStarted

OUTPUTS = tuple(f"y{k}" for k in range(10))


def step(params):
    import time as _time
    from pathlib import Path as _Path

    _time.sleep(params["seconds"])
    if params["marker"]:
        _Path(params["marker"]).write_text("ran")
    return {"y": params["x"] + 1}


def arrays(params):
    import numpy as _np

    # Buffers under the shared-memory threshold travel as socket frames after the result's own:
    # 9 MB, more than a socket holds, so the worker waits on its socket until the driver reads.
    return {f"y{k}": _np.full(900_000, k, dtype=_np.uint8) for k in range(10)}


def closes_its_socket(params):
    import os as _os
    import sys as _sys
    import time as _time

    _os.close(int(_sys.argv[1]))   # the worker's end of its socket to the driver (see maze.backends._local_records)
    _time.sleep(params["seconds"])
    return {"y": 0}


def _quiet(event: object) -> None:
    pass


@pytest.fixture
def backend():
    with LocalBackend(max_workers=2) as b:
        # Two workers, both idle: a call handed over later goes to one at once, starting none.
        both = [b.submit(call_taking_x(step, f"warm{i}", i, ("y",), seconds=0.3, marker=""), _quiet) for i in (1, 2)]
        assert all(f.result(30).ok for f in both)
        assert len([w for w in b._workers if w.idle]) == 2
        yield b


class Gate:
    """A report that holds the I/O thread at a call's start until :meth:`open`; the start's worker pid and time."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._started = threading.Event()
        self.pid = 0
        self.at = 0.0

    def report(self, event: object) -> None:
        if isinstance(event, TaskStarted) and not self._started.is_set():
            self.pid, self.at = event.worker, time.monotonic()
            self._started.set()
            assert self._open.wait(60), "the gate was never opened"

    def wait_started(self) -> None:
        assert self._started.wait(30), "the call never started"

    def open(self) -> None:
        self._open.set()


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _worker(backend: LocalBackend, pid: int):
    return next(w for w in backend._workers if w.proc.pid == pid)


def _wait_until_sent(backend: LocalBackend, pid: int) -> int:
    """Wait until worker ``pid`` has stopped sending (its frames not read); how many bytes wait in its socket."""
    sock = _worker(backend, pid).sock
    last, since, deadline = -1, time.monotonic(), time.monotonic() + 30
    while time.monotonic() - since < 0.3:
        assert time.monotonic() < deadline, "the worker never stopped sending"
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if queued != last or queued == 0:
            last, since = queued, time.monotonic()
        time.sleep(0.02)
    return last


def test_calls_put_while_a_timed_out_call_is_looked_at_are_sent(backend, tmp_path):
    # A call with a timeout and a call sent behind it both end on the worker past the
    # deadline, before the I/O thread gets to the timeout. It then looks at what the
    # worker sent before killing it, and reads both results; a call submitted from a
    # result's callback meanwhile (as the scheduler does) must go out, though nothing
    # else will wake the thread.
    gate, ended = Gate(), tmp_path / "t2-ended"
    head = backend.submit(call_taking_x(step, "t1", 1, ("y",), timeout=0.5, seconds=0.8, marker=""), gate.report)
    gate.wait_started()
    behind = backend.submit_behind(call_taking_x(step, "t2", 2, ("y",), seconds=0.0, marker=str(ended)), _quiet,
                                   behind="run:t1:1")
    later: list[Future[TaskOutcome]] = []
    head.add_done_callback(lambda _: later.append(
        backend.submit(call_taking_x(step, "t3", 3, ("y",), seconds=0.0, marker=""), _quiet)))
    try:
        _wait_for(ended.exists, "t2 to end behind t1")
        assert _wait_until_sent(backend, gate.pid) > 0   # both results wait in the socket
        assert time.monotonic() > gate.at + 0.5          # past t1's deadline
    finally:
        gate.open()
    assert head.result(10).ok and behind.result(10).ok   # t1 had ended: nothing was killed
    _wait_for(lambda: bool(later), "t3 to be submitted")
    outcome = later[0].result(10)
    assert outcome.ok and outcome.result == {"y": 4}


def test_a_worker_stopped_halfway_through_sending_a_result_holds_up_no_other_call(backend):
    # Its result's frames stop coming midway (SIGSTOP, a debugger). Meanwhile the other
    # worker's call is still timed out, and when the worker goes on, the result arrives whole.
    gate = Gate()
    big = backend.submit(call_taking_x(arrays, "big", 0, OUTPUTS, timeout=60), gate.report)
    gate.wait_started()
    stopped = False
    try:
        try:
            assert _wait_until_sent(backend, gate.pid) > 0
            assert not big.done()
            os.kill(gate.pid, signal.SIGSTOP)
            stopped = True
        finally:
            gate.open()
        held = _worker(backend, gate.pid)
        _wait_for(lambda: held.unread_done is not None, "the driver to hold the result")
        sleeper = backend.submit(call_taking_x(step, "late", 0, ("y",), timeout=0.3, seconds=30, marker=""), _quiet)
        outcome = sleeper.result(10)   # enforced while the stopped worker's result is half read
        assert outcome.error is not None and outcome.error.kind is Failure.TIMED_OUT
        assert not big.done()
    finally:
        if stopped:
            os.kill(gate.pid, signal.SIGCONT)
    result = big.result(20).result
    assert result is not None and sorted(result) == list(OUTPUTS)
    assert all(result[f"y{k}"].shape == (900_000,) and (result[f"y{k}"] == k).all() for k in range(10))


def test_a_call_whose_result_is_still_arriving_at_its_deadline_keeps_it(backend):
    # The call ended in time, but its result is still on its way when the I/O thread gets
    # to its deadline (here: held until then). A call is lined up behind it on its worker,
    # so its kill waits for a look at what the worker sent; the look finds the result
    # coming, and nothing is killed.
    gate = Gate()
    big = backend.submit(call_taking_x(arrays, "big", 0, OUTPUTS, timeout=1.0), gate.report)
    gate.wait_started()
    # Sent to the worker behind big (a call of the same function, so that it goes at once).
    behind = backend.submit_behind(call_taking_x(arrays, "after", 0, OUTPUTS), _quiet, behind="run:big:1")
    try:
        assert _wait_until_sent(backend, gate.pid) > 0   # the worker waits for the driver to read
        _wait_for(lambda: time.monotonic() > gate.at + 1.1, "big's deadline to pass")
    finally:
        gate.open()
    first, after = big.result(20), behind.result(20)
    assert first.ok and after.ok, (first.error, after.error)
    assert after.started_at is not None and first.finished_at is not None and after.started_at >= first.finished_at
    assert all((first.result[f"y{k}"] == k).all() for k in range(10))


@pytest.mark.parametrize("lined_up", [False, True], ids=["alone", "with-a-call-behind"])
def test_a_result_that_stops_arriving_is_given_up_at_the_timeout(backend, lined_up):
    # Its worker is stopped (SIGSTOP) halfway through sending the result and never goes
    # on. The call has a timeout: the run must not wait on the frozen worker past it (and
    # a second more, while nothing arrives). The call behind it runs elsewhere.
    gate = Gate()
    big = backend.submit(call_taking_x(arrays, "big", 0, OUTPUTS, timeout=2.0), gate.report)
    gate.wait_started()
    behind = backend.submit_behind(call_taking_x(arrays, "after", 0, OUTPUTS), _quiet,
                                   behind="run:big:1") if lined_up else None
    try:
        assert _wait_until_sent(backend, gate.pid) > 0
        os.kill(gate.pid, signal.SIGSTOP)   # stopped for good: the kill ends it
    finally:
        gate.open()
    outcome = big.result(15)
    assert outcome.error is not None and outcome.error.kind is Failure.TIMED_OUT
    if behind is not None:
        after = behind.result(20)
        assert after.ok and all((after.result[f"y{k}"] == k).all() for k in range(10))


def test_a_task_that_closes_its_worker_s_socket_fails_at_once_and_holds_up_no_other_call(backend):
    # The driver sees the end of the worker's socket while the worker still runs: it must
    # not wait for that task to end before it serves the other workers.
    closer = backend.submit(call_taking_x(closes_its_socket, "closer", 0, ("y",), seconds=60), _quiet)
    sleeper = backend.submit(call_taking_x(step, "late", 0, ("y",), timeout=0.3, seconds=60, marker=""), _quiet)
    outcome = closer.result(10)
    assert outcome.error is not None and outcome.error.kind is Failure.WORKER_DIED
    timed = sleeper.result(10)
    assert timed.error is not None and timed.error.kind is Failure.TIMED_OUT

