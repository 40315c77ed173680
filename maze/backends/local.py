"""The local backend: tasks run in a pool of worker processes on this machine.

Why not an off-the-shelf executor: ``concurrent.futures`` and loky's reusable
executor cost 400-650 us per dependent step on a 2-core machine (two helper
threads and a queue feeder between the caller and the worker), cannot stop
one running task without killing the whole pool, and have no ordered channel
for "started" and ``print()`` events ahead of the result. This pool is small:

* each worker is a fresh interpreter (``python -c``, so a user's script is
  never re-imported and needs no ``if __name__ == "__main__"`` guard) joined to
  the driver by one socket pair, over which everything about a task travels in
  order (see :mod:`maze.backends._worker`);
* functions and values are pickled with cloudpickle, so tasks defined in a
  notebook or ``__main__`` work; a function is sent to each worker once;
* an output is pickled once, in the worker that made it, and the driver hands
  the same bytes to every dependent task without unpickling and re-pickling;
  large buffers (numpy arrays) go through shared memory (see ``_packing``);
* one I/O thread waits on all worker sockets and resolves futures; their
  callbacks (the scheduler) submit the next tasks straight from that thread;
* a worker serves one device set: GPU tasks run in workers started with
  ``CUDA_VISIBLE_DEVICES`` naming the granted devices, set before any CUDA
  library could read it;
* stopping a task (cancel, timeout) kills its worker; a worker that dies fails
  only its task, and the pool starts another when one is needed.

Workers are reused across runs and workflows, and are gone after
:meth:`LocalBackend.close` or interpreter exit (an ``atexit`` hook, and each
worker exits by itself when the driver disappears).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from maze.backends import _packing
from maze.core.errors import BackendError
from maze.core.protocol import Reporter, TaskCall, TaskError, TaskLog, TaskOutcome, TaskStarted
from maze.core.resources import Capacity, detect_capacity

DeviceKey = tuple[int, ...] | None

_BOOT = (
    "import sys, json; sys.path[:0] = [p for p in json.loads(sys.argv[3]) if p not in sys.path]; "
    "from maze.backends._worker import main; main(int(sys.argv[1]), int(sys.argv[2]))"
)


@dataclass(eq=False)
class _Job:
    call: TaskCall
    report: Reporter
    future: Future[TaskOutcome]
    deadline: float | None = None          # monotonic time at which the attempt is stopped
    stop_reason: TaskError | None = None   # set when we kill the worker on purpose


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    conn: Connection
    devices: DeviceKey
    host: str = ""
    known: set[str] = field(default_factory=set)   # function keys this worker has unpickled
    job: _Job | None = None
    retiring: bool = False                          # closed on purpose; not an error when it ends


class LocalBackend:
    """Runs tasks in worker processes on this machine. See the module docstring."""

    name = "joblib"

    def __init__(self, *, max_workers: int | None = None, prestart: bool = True) -> None:
        self._capacity = detect_capacity()
        cpus = max(1, math.ceil(self._capacity.cpu))
        self.max_workers = max_workers or max(4, 2 * cpus)
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._queue: deque[_Job] = deque()
        self._jobs: dict[str, _Job] = {}           # call id -> job, queued or running
        self._fn_cache: weakref.WeakKeyDictionary[Any, tuple[str, bytes]] = weakref.WeakKeyDictionary()
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()   # used by the I/O thread only
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._joining: list[_Worker] = []              # spawned, not yet registered with the selector
        self._io = threading.Thread(target=self._io_loop, name="maze-local-io", daemon=True)
        self._io.start()
        _live.add(self)
        if prestart:
            with self._lock:
                for _ in range(min(cpus, self.max_workers)):
                    self._spawn(None)

    # -- protocol -------------------------------------------------------------------

    def capacity(self) -> Capacity:
        return self._capacity

    def submit(self, call: TaskCall, report: Reporter) -> Future[TaskOutcome]:
        job = _Job(call, report, Future())
        job.future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise BackendError("the local backend is closed; create a new MaClient")
            self._jobs[call.call_id] = job
            worker = self._idle_worker(call.gpu_ids or None)
            if worker is None:
                self._queue.append(job)
                return job.future
            self._send(worker, job)
        return job.future

    def stop(self, call_id: str) -> None:
        with self._lock:
            job = self._jobs.get(call_id)
            if job is None:
                return
            reason = TaskError.cancelled(job.call.task_id)
            if job in self._queue:
                self._queue.remove(job)
                del self._jobs[call_id]
            else:
                job.stop_reason = reason
                self._kill_running(job)
                return
        job.future.set_result(TaskOutcome(error=reason))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
            pending = list(self._jobs.values())
            self._jobs.clear()
            self._queue.clear()
        for w in workers:
            w.retiring = True
            _hang_up(w.conn)  # an idle worker sees EOF and exits
        deadline = time.monotonic() + 2.0
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()) if w.job is None else 0.0)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self._wake()
        self._io.join(timeout=5)
        for w in workers:
            w.conn.close()
        for job in pending:
            if not job.future.done():
                job.future.set_result(TaskOutcome(error=TaskError.simple("TaskCancelled", "the backend was closed")))
        self._wake_r.close()
        self._wake_w.close()
        _packing.remove_files_of(str(os.getpid()))
        _live.discard(self)

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers --------------------------------------------------------------------

    def _spawn(self, devices: DeviceKey) -> _Worker:
        ours, theirs = socket.socketpair()
        env = None
        if devices is not None:
            env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=",".join(map(str, devices)))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid()), json.dumps(sys.path)],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                start_new_session=False,
            )
        finally:
            theirs.close()
        worker = _Worker(proc, Connection(ours.detach()), devices)
        self._workers.append(worker)
        self._joining.append(worker)
        self._wake()
        return worker

    def _idle_worker(self, devices: DeviceKey) -> _Worker | None:
        """An idle worker for this device set, started or recycled if need be (lock held)."""
        for w in self._workers:
            if w.job is None and w.devices == devices and not w.retiring:
                return w
        if len(self._workers) >= self.max_workers:
            spare = next((w for w in self._workers if w.job is None and not w.retiring), None)
            if spare is None:
                return None
            self._retire(spare)
        return self._spawn(devices)

    def _retire(self, worker: _Worker) -> None:
        worker.retiring = True
        self._workers.remove(worker)
        _hang_up(worker.conn)  # the I/O thread sees EOF, reaps the process and closes the socket

    def _kill_running(self, job: _Job) -> None:
        for w in self._workers:
            if w.job is job:
                try:
                    w.proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return

    def _send(self, worker: _Worker, job: _Job) -> None:
        """Hand a job to an idle worker (lock held)."""
        call = job.call
        keys = list(call.inputs)
        packs: list[_packing.Packed] = [call.inputs[k] for k in keys]
        try:
            fn_key, fn_bytes = self._pickled_function(call.func)
            ship = None if fn_key in worker.known else fn_bytes
            header = _packing.dumps((
                call.call_id, call.task_id, fn_key, ship, dict(call.constants), keys,
                [p.descriptor() for p in packs], call.outputs,
            ))
        except Exception as exc:  # noqa: BLE001 - an unpicklable function or constant input
            del self._jobs[call.call_id]
            job.future.set_result(TaskOutcome(error=TaskError.simple(
                type(exc).__name__, f"the function or inputs of task {call.task_id!r} could not be pickled: {exc}"
            )))
            self._feed(worker)
            return
        worker.known.add(fn_key)
        worker.job = job
        try:
            worker.conn.send_bytes(header)
            _packing.send(worker.conn.send_bytes, packs)
        except OSError:
            pass  # the worker died; the I/O thread reports it and fails this job

    def _pickled_function(self, func: Callable[..., Any]) -> tuple[str, bytes]:
        try:
            return self._fn_cache[func]
        except (KeyError, TypeError):
            entry = (uuid.uuid4().hex, cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL))
            try:
                self._fn_cache[func] = entry
            except TypeError:
                pass  # not weak-referenceable; pickle it again next time
            return entry

    # -- the I/O thread ---------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _io_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed and not self._workers:
                    break
                for w in self._joining:
                    self._selector.register(w.conn, selectors.EVENT_READ, w)
                self._joining.clear()
                deadlines = [w.job.deadline for w in self._workers if w.job and w.job.deadline]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    self._on_readable(key.data)
            self._enforce_timeouts()
        self._selector.close()

    def _on_readable(self, worker: _Worker) -> None:
        try:
            frame = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._on_worker_exit(worker)
            return
        kind = frame[0]
        job = worker.job
        if kind == "ready":
            worker.host = frame[2]
        elif job is None:
            return
        elif kind == "started":
            if job.call.timeout:
                job.deadline = time.monotonic() + job.call.timeout
            job.report(TaskStarted(job.call.call_id, worker.host or socket.gethostname(),
                                   worker.proc.pid, job.call.gpu_ids, frame[2]))
        elif kind == "log":
            job.report(TaskLog(job.call.call_id, frame[2], frame[3], frame[4]))
        elif kind == "done":
            self._on_done(worker, job, frame)

    def _on_done(self, worker: _Worker, job: _Job, frame: tuple[Any, ...]) -> None:
        _, _, keys, error, started, finished, descriptors = frame
        try:
            packs = _packing.receive(worker.conn.recv_bytes, descriptors)
        except (EOFError, OSError):
            self._on_worker_exit(worker)
            return
        for p in packs:
            p.own_file()
        if error is None:
            try:
                result = {k: _packing.unpack(p) for k, p in zip(keys, packs)}
                outcome = TaskOutcome(result, dict(zip(keys, packs)), None, started, finished)
            except Exception as exc:  # noqa: BLE001 - e.g. a class the driver cannot import
                outcome = TaskOutcome(error=TaskError.simple(
                    type(exc).__name__, f"the result of task {job.call.task_id!r} could not be unpickled: {exc}"
                ), started_at=started, finished_at=finished)
        else:
            outcome = TaskOutcome(error=error, started_at=started, finished_at=finished)
        with self._lock:
            worker.job = None
            self._jobs.pop(job.call.call_id, None)
            self._feed(worker)
        job.future.set_result(outcome)

    def _feed(self, worker: _Worker) -> None:
        """Give queued work to a worker that just became idle (lock held)."""
        for job in self._queue:
            if (job.call.gpu_ids or None) == worker.devices:
                self._queue.remove(job)
                self._send(worker, job)
                return
        if self._queue:  # queued work needs another device set: recycle this worker for it
            job = self._queue.popleft()
            self._retire(worker)
            self._send(self._spawn(job.call.gpu_ids or None), job)

    def _on_worker_exit(self, worker: _Worker) -> None:
        """The worker's socket hit EOF: it exited, died, or was retired (I/O thread)."""
        code = worker.proc.wait()
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            self._selector.unregister(worker.conn)
            worker.conn.close()
            job, worker.job = worker.job, None
            if job is not None:
                self._jobs.pop(job.call.call_id, None)
            if self._queue and not self._closed:
                nxt = self._queue.popleft()
                self._send(self._spawn(nxt.call.gpu_ids or None), nxt)
        if job is None or job.future.done():
            return
        error = job.stop_reason or TaskError.simple(
            "WorkerDiedError",
            f"the worker process {worker.proc.pid} running task {job.call.task_id!r} died ({_describe_exit(code)})",
        )
        job.future.set_result(TaskOutcome(error=error))

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        with self._lock:
            for w in self._workers:
                job = w.job
                if job and job.deadline and job.deadline <= now and job.stop_reason is None:
                    job.stop_reason = TaskError.timed_out(job.call.task_id, job.call.timeout or 0)
                    job.deadline = None
                    self._kill_running(job)


def _hang_up(conn: Connection) -> None:
    """End a worker's connection so that the worker sees EOF at once.

    ``shutdown``, not ``close``: the I/O thread's selector holds the socket, so
    closing it from another thread would neither end the connection nor be
    safe; the I/O thread closes it when it reads the EOF.
    """
    if conn.closed:
        return
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}, exit code {code}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


_live: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for backend in list(_live):
        backend.close()
