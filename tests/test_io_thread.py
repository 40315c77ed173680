"""The local backend's I/O thread serves every worker: no one worker may hold it up, and what it puts goes out.

Each test keeps the thread off its work for a moment by holding the backend's
lock, as a busy submitting thread does, to make a timing that is otherwise a
matter of luck happen every time.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
import time
from concurrent.futures import Future

import pytest
from calls import call_taking_x

from maze.backends.local import LocalBackend
from maze.core.protocol import Failure, TaskOutcome, TaskStarted


def step(params):
    import time as _time
    from pathlib import Path as _Path

    _time.sleep(params["seconds"])
    if params["marker"]:
        _Path(params["marker"]).write_text("ran")
    return {"y": params["x"] + 1}


def arrays(params):
    import numpy as _np

    # Buffers under the shared-memory threshold travel as socket frames after the result's own.
    return {f"y{k}": _np.full(900_000, k, dtype=_np.uint8) for k in range(10)}


def _quiet(event: object) -> None:
    pass


@pytest.fixture
def backend():
    with LocalBackend(max_workers=2) as b:
        yield b


def _started(pids: dict[str, int]):
    def report(event: object) -> None:
        if isinstance(event, TaskStarted):
            pids[event.call_id] = event.worker
    return report


def _wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _hold_io_thread(backend: LocalBackend):
    """Hold the backend's lock, the I/O thread waiting for it at the end of its pass: it reads nothing meanwhile."""
    backend._lock.acquire()
    backend._wake()   # out of its select now, if it was in one
    return backend._lock


def test_calls_put_while_a_timed_out_call_is_looked_at_are_sent(backend, tmp_path):
    # A call with a timeout, a call sent behind it, and both end on the worker just
    # past the deadline, before the I/O thread gets to the timeout. It then looks at
    # what the worker sent before killing it, and reads both results; a call submitted
    # from a result's callback meanwhile (as the scheduler does) must go out too.
    pids: dict[str, int] = {}
    ended = tmp_path / "t2-ended"
    head = backend.submit(call_taking_x(step, "t1", 1, ("y",), timeout=0.5, seconds=0.8, marker=""),
                          _started(pids))
    behind = backend.submit_behind(call_taking_x(step, "t2", 2, ("y",), seconds=0.0, marker=str(ended)), _quiet,
                                   behind="run:t1:1")
    later: list[Future[TaskOutcome]] = []
    head.add_done_callback(lambda _: later.append(
        backend.submit(call_taking_x(step, "t3", 3, ("y",), seconds=0.0, marker=""), _quiet)))
    _wait_for(lambda: "run:t1:1" in pids, "t1 to start")
    # The I/O thread waits for the lock before its next select, whose timeout is t1's deadline
    # (no wake here: a wake would end the select after the look, whatever the look put).
    lock = backend._lock
    lock.acquire()
    try:
        _wait_for(ended.exists, "t2 to end behind t1")
        time.sleep(0.2)   # t2's result is in the socket
    finally:
        lock.release()
    assert head.result(10).ok and behind.result(10).ok   # t1 had ended: nothing was killed
    _wait_for(lambda: bool(later), "t3 to be submitted")
    outcome = later[0].result(10)
    assert outcome.ok and outcome.result == {"y": 4}


def _queued(backend: LocalBackend, pid: int) -> int:
    """How many bytes worker ``pid`` has sent that the driver has not read."""
    worker = next(w for w in backend._workers if w.proc.pid == pid)
    return struct.unpack("i", fcntl.ioctl(worker.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def test_a_worker_stopped_halfway_through_sending_a_result_holds_up_no_other_call(backend):
    # Its result's frames stop coming midway (SIGSTOP, a debugger). Meanwhile the
    # other worker's call must still be timed out, and once the worker goes on, its
    # result arrives whole: the call ended within its timeout, though the rest of
    # its result came after the deadline.
    pids: dict[str, int] = {}
    big = backend.submit(call_taking_x(arrays, "big", 0, tuple(f"y{k}" for k in range(10)), timeout=1.0),
                         _started(pids))
    _wait_for(lambda: "run:big:1" in pids, "big to start")
    deadline = time.monotonic() + 1.0
    pid = pids["run:big:1"]
    lock = _hold_io_thread(backend)
    stopped = False
    try:
        # The worker sends 9 MB of frames and blocks once its socket is full.
        last, steady_since = -1, time.monotonic()
        while time.monotonic() - steady_since < 0.3:
            queued = _queued(backend, pid)
            if queued != last or queued == 0:
                last, steady_since = queued, time.monotonic()
            time.sleep(0.02)
        os.kill(pid, signal.SIGSTOP)
        stopped = True
    finally:
        lock.release()
    try:
        sleeper = backend.submit(call_taking_x(step, "late", 0, ("y",), timeout=0.3, seconds=30, marker=""), _quiet)
        outcome = sleeper.result(10)   # enforced while the stopped worker's result is half read
        assert outcome.error is not None and outcome.error.kind is Failure.TIMED_OUT
        assert not big.done()
        time.sleep(max(0.0, deadline + 0.3 - time.monotonic()))   # past big's deadline
        assert not big.done()
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
    result = big.result(20).result
    assert result is not None and sorted(result) == [f"y{k}" for k in range(10)]
    assert all(result[f"y{k}"].shape == (900_000,) and (result[f"y{k}"] == k).all() for k in range(10))


def test_a_result_whose_output_frames_come_in_many_reads_is_read_whole(backend):
    # The same 9 MB without a stop: the result is handled once its last frame is in.
    outcomes = [backend.submit(call_taking_x(arrays, f"a{i}", 0, tuple(f"y{k}" for k in range(10))), _quiet)
                for i in range(3)]
    for f in outcomes:
        result = f.result(30).result
        assert result is not None and all((result[f"y{k}"] == k).all() for k in range(10))


def closes_its_socket(params):
    import os as _os
    import sys as _sys
    import time as _time

    _os.close(int(_sys.argv[1]))   # the worker's end of its socket to the driver (see maze.backends._local_records)
    _time.sleep(params["seconds"])
    return {"y": 0}


def test_a_task_that_closes_its_worker_s_socket_fails_at_once_and_holds_up_no_other_call(backend):
    # The driver sees the end of the worker's socket while the worker still runs: it must
    # not wait for that task to end before it serves the other workers.
    closer = backend.submit(call_taking_x(closes_its_socket, "closer", 0, ("y",), seconds=60), _quiet)
    sleeper = backend.submit(call_taking_x(step, "late", 0, ("y",), timeout=0.3, seconds=60, marker=""), _quiet)
    outcome = closer.result(10)
    assert outcome.error is not None and outcome.error.kind is Failure.WORKER_DIED
    timed = sleeper.result(10)
    assert timed.error is not None and timed.error.kind is Failure.TIMED_OUT
