"""The inline backend: tasks run one at a time in a thread of this process.

For debugging and for tests of the scheduler: no pickling, no processes, and a
breakpoint in a task stops in your own interpreter. It is also the reference
implementation of the backend protocol (:mod:`maze.core.protocol`) in under a
hundred lines. ``print()`` is captured per thread, so output of the caller is
left alone. A running task cannot be stopped (threads can't be killed):
``stop`` only drops queued calls; a ``timeout`` is reported once the attempt
returns.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, TextIO

from maze.core.execute import LineWriter, gather_params, run_body
from maze.core.protocol import Reporter, TaskCall, TaskError, TaskLog, TaskOutcome, TaskStarted
from maze.core.resources import Capacity, detect_capacity


class _ThreadRoutedStream:
    """Writes of the worker thread go to that thread's writer; all others pass through."""

    def __init__(self, original: TextIO, local: threading.local, slot: str) -> None:
        self._original = original
        self._local = local
        self._slot = slot  # "out" or "err": the attribute of ``local`` holding the writer

    def _target(self) -> Any:
        return getattr(self._local, self._slot, None) or self._original

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class InlineBackend:
    """Runs each call in one background thread, in submission order."""

    name = "inline"

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[TaskCall, Reporter, Future[TaskOutcome]] | None] = queue.SimpleQueue()
        self._dropped: set[str] = set()
        self._local = threading.local()
        self._thread = threading.Thread(target=self._loop, name="maze-inline", daemon=True)
        self._thread.start()

    def capacity(self) -> Capacity:
        return detect_capacity()

    def submit(self, call: TaskCall, report: Reporter) -> Future[TaskOutcome]:
        future: Future[TaskOutcome] = Future()
        self._calls.put((call, report, future))
        return future

    def stop(self, call_id: str) -> None:
        self._dropped.add(call_id)

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while (item := self._calls.get()) is not None:
            call, report, future = item
            if call.call_id in self._dropped:
                future.set_result(TaskOutcome(error=TaskError.cancelled(call.task_id)))
                continue
            future.set_result(self._run(call, report))

    def _run(self, call: TaskCall, report: Reporter) -> TaskOutcome:
        started = time.time()
        report(TaskStarted(call.call_id, socket.gethostname(), os.getpid(), call.gpu_ids, started))

        def emit(stream: str, text: str) -> None:
            report(TaskLog(call.call_id, stream, text, time.time()))

        self._local.out, self._local.err = LineWriter("stdout", emit), LineWriter("stderr", emit)
        saved = sys.stdout, sys.stderr
        sys.stdout = _ThreadRoutedStream(saved[0], self._local, "out")
        sys.stderr = _ThreadRoutedStream(saved[1], self._local, "err")
        try:
            params = gather_params(call.constants, call.inputs)
            result, error = run_body(call.func, params, call.outputs, call.task_id)
        finally:
            self._local.out.flush()
            self._local.err.flush()
            self._local.out = self._local.err = None
            sys.stdout, sys.stderr = saved
        finished = time.time()
        if error is None and call.timeout is not None and finished - started > call.timeout:
            error = TaskError.timed_out(call.task_id, call.timeout, stopped=False)
        if error is not None:
            return TaskOutcome(error=error, started_at=started, finished_at=finished)
        return TaskOutcome(result, result or {}, None, started, finished)
