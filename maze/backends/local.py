"""The local backend: tasks run in a pool of worker processes on this machine.

Why not an off-the-shelf executor: ``concurrent.futures`` and loky's reusable
executor cost 400-650 us per dependent step on a 2-core machine (two helper
threads and a queue feeder between the caller and the worker), cannot stop
one running task without killing the whole pool, and have no ordered channel
for "started" and ``print()`` events ahead of the result. This pool is small:

* each worker is a fresh interpreter (``python -c``, so a user's script is
  never re-imported and needs no ``if __name__ == "__main__"`` guard) joined to
  the driver by one socket pair, over which everything about a task travels in
  order, as named frames (see :mod:`maze.backends._worker`);
* a task's code is what the scheduler pickled at ``run()`` time
  (:attr:`TaskCall.code`), keyed by its content: a worker is sent the bytes
  only when it has not loaded that key, so unchanged code travels once per
  worker and code whose globals, closure or defaults changed is always fresh;
* an output is pickled once, in the worker that made it, and the driver hands
  the same bytes to every dependent task without unpickling and re-pickling;
  constant inputs are pickled the same way, by the driver, a large one once
  per run however many tasks take it; large buffers (numpy arrays) go through
  shared memory (see ``_packing``), never through the socket;
* one I/O thread waits on all worker sockets and resolves futures; their
  callbacks (the scheduler) submit the next tasks straight from that thread.
  It reads everything a worker has sent in one read, and writes the frames
  its pass queued for a worker in one write (:mod:`maze.backends._wire`);
  other threads write before they release the lock. It never waits for one
  worker: writes go as far as the socket takes them, and a result is handled
  once all its frames have arrived.
  A call lined up behind another (``submit_behind``, which the scheduler uses
  for quick tasks, several deep) is sent at once to the worker that will run
  that one, which finds it waiting when it is done: no round trip through the
  driver between two quick calls. It counts as started only when the one
  before has ended (a worker runs one call at a time); stopped before that,
  it is dropped (:class:`~maze.backends._worker.Drop`; if the worker had
  started it already, it is killed like any running call once it says it
  runs), and after a failure the worker waits for the driver's ``Go``, sent
  once the scheduler has heard of the failure (and may have stopped it). A
  call that takes the outputs of the one before it (``upcoming_outputs``: a
  quick task's dependent in a chain) is sent the same way, and the worker
  fills those inputs in from what it kept of that call's outputs
  (``CallHeader.chain``). If that call makes no outputs (it fails, it is
  stopped before it starts), the call behind it is taken back with it
  (``_unfeed``); if the worker goes, it runs elsewhere with the outputs as
  the driver received them;
* a worker serves one device set: GPU tasks run in workers started with
  ``CUDA_VISIBLE_DEVICES`` naming the granted devices, set before any CUDA
  library could read it;
* each worker leads a process group (a session) of its own, and stopping a
  task (cancel, timeout) kills that group: the worker and every process its
  task started (a timeout runs from the worker's ``Started`` frame, sent at
  once for a call with a timeout; the I/O thread enforces it, see
  :mod:`maze.backends._jobs`). A call with calls sent behind it is killed
  only after a look at what its worker has sent: if it has ended, the worker
  may be running the next one, and nothing is killed. A worker that dies
  fails only its task, and the pool starts another when one is needed. (A
  Ctrl-C in a terminal therefore reaches the driver only; the driver cancels
  the run.)

Workers are reused across runs and workflows. :meth:`LocalBackend.close` (also
run at interpreter exit) lets idle workers exit, then kills every worker's
group, so no process a task started outlives the backend. If the driver is
killed, each worker notices, removes the driver's shared-memory files and kills
its own group; a backend that starts removes the files of drivers that no
longer exist.
"""

from __future__ import annotations

import atexit
import os
import selectors
import socket
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any

from maze.backends import _packing
from maze.backends._jobs import sweep, wrapped_error
from maze.backends._local_records import (
    Constant,
    DeviceKey,
    LocalJob,
    Outbox,
    Unfed,
    Upcoming,
    Worker,
    describe_exit,
    end_unfed,
)
from maze.backends._worker import (
    CallHeader,
    Done,
    Drop,
    Dropped,
    Fed,
    Frame,
    Go,
    Log,
    Ready,
    Started,
    decode,
    encode,
)
from maze.core.errors import BackendError
from maze.core.protocol import Reporter, TaskCall, TaskError, TaskLog, TaskOutcome, TaskStarted
from maze.core.resources import Capacity, detect_capacity, usable_cpus

# A constant whose pickle is at least this large is packed once per run, not
# once per call; below it, the bookkeeping would cost more than packing again.
_CACHED_CONSTANT_BYTES = 64 << 10
# How much one read takes, at most, of the output frames that follow a result (up
# to SHARED_THRESHOLD each: larger buffers go through shared memory).
_FOLLOWING_CHUNK = 1 << 20
# A call whose result has begun to arrive has ended, and is not stopped (its
# timeout, a kill that waits for a look) while the rest keeps coming. If the
# worker sends nothing more for this long (it was stopped from outside), the
# stop goes ahead: a run must not wait on a frozen process past a timeout.
_STALLED_S = 1.0


class LocalBackend:
    """Runs tasks in worker processes on this machine. See the module docstring."""

    name = "joblib"

    def __init__(self, *, max_workers: int | None = None, prestart: bool = True) -> None:
        cpus = usable_cpus()
        self._pid = os.getpid()
        self.max_workers = max_workers or max(4, 2 * cpus)
        self._lock = threading.Lock()
        self._workers: list[Worker] = []      # every worker process not yet reaped, retiring ones too
        self._queue: deque[LocalJob] = deque()
        self._jobs: dict[str, LocalJob] = {}  # call id -> job, queued or running
        # (run id, id(value)) -> a large constant, packed; an entry lives while a job holds it.
        self._constants: weakref.WeakValueDictionary[tuple[str, int], Constant] = weakref.WeakValueDictionary()
        self._owner = _packing.new_owner()   # names the shared-memory files of this backend's values
        self._closed = False
        _packing.remove_orphaned_files()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()   # used by the I/O thread only
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._joining: list[Worker] = []            # spawned, not yet registered with the selector
        self._unsent: dict[Worker, None] = {}       # workers with frames put and not yet written
        self._stalled: dict[Worker, bool] = {}      # workers whose socket took only part: watched for writing?
        self._killing: dict[Worker, LocalJob] = {}  # running calls to stop once the worker's frames are read
        self._io = threading.Thread(target=self._io_loop, name="maze-local-io", daemon=True)
        self._io.start()
        _live.add(self)
        if prestart:
            with self._lock:
                for _ in range(min(cpus, self.max_workers)):
                    self._spawn(None)
        # After the workers are on their way: asking NVML about GPUs takes a while,
        # and a worker's interpreter boots meanwhile.
        self._capacity = detect_capacity()

    # -- protocol -------------------------------------------------------------------

    def capacity(self) -> Capacity:
        return self._capacity

    def submit(self, call: TaskCall, report: Reporter) -> Future[TaskOutcome]:
        job = self._new_job(call, report)
        if job.future.done():
            return job.future
        with self._lock:
            self._admit(job)
            unfed = self._fill_in(job)
            if unfed is None:
                self._place(job)
            self._write_out()
        end_unfed(unfed)
        return job.future

    def submit_behind(self, call: TaskCall, report: Reporter, behind: str) -> Future[TaskOutcome]:
        """Submit a call that starts when ``behind`` has ended (see :class:`~maze.core.protocol.LiningBackend`)."""
        job = self._new_job(call, report)
        if job.future.done():
            return job.future
        unfed = None
        with self._lock:
            self._admit(job)
            head = self._jobs.get(behind)
            if head is not None and head.next is None and head is not job:
                head.next, job.behind = job, head
                self._send_ahead(head, job)
            else:  # ended already (if it takes its outputs, they are known now)
                unfed = self._fill_in(job)
                if unfed is None:
                    self._place(job)
            self._write_out()
        end_unfed(unfed)
        return job.future

    def _send_ahead(self, head: LocalJob, job: LocalJob, *, chain: bool = False) -> bool:
        """Send ``job``, lined up behind ``head``, to the worker that runs ``head`` last, if it can go now
        (lock held); whether it went.

        Only a call of the same code (the worker keeps the code it ran last,
        so it is there when the call starts) whose inputs are known or made by
        ``head``, behind a call that is not being stopped. One that takes
        ``head``'s outputs (a chain's next link: the worker fills them in, see
        ``CallHeader.chain``) goes only when another call is lined up behind
        it (``chain``): alone, it would cost the worker a wait for the driver's
        ``Fed`` as long as the wait for the call itself, and one more write.
        """
        for v in job.inputs.values():
            if isinstance(v, Upcoming) and (v.outbox is not head.outbox or not chain):
                return False
        if head.stop_reason is not None or job.call.code.key != head.call.code.key:
            return False
        worker = head.sent_to
        if worker is None:
            worker = next((w for w in self._workers if w.job is head), None)
        if worker is None and head.behind is not None:   # a chain's link waiting here: it goes first
            if self._send_ahead(head.behind, head, chain=True):
                worker = head.sent_to
        if worker is not None and worker.last is head and not worker.retiring \
                and worker.devices == (job.call.gpu_ids or None):
            self._send(worker, job, ahead=True)
            return True
        return False

    def upcoming_outputs(self, call_id: str) -> dict[str, Upcoming] | None:
        """Handles for the outputs of a call that has not ended, for the call lined up behind it."""
        with self._lock:
            job = self._jobs.get(call_id)
            return None if job is None else {key: Upcoming(job.outbox, key) for key in job.call.outputs}

    def _fill_in(self, job: LocalJob) -> Unfed | None:
        """Fill in the upcoming outputs ``job`` takes, before it is sent (lock held).

        If one of them never will be (its call ended badly), ``job`` is dropped
        and returned with why, for :func:`end_unfed` once the lock is released.
        """
        for key, value in job.inputs.items():
            if not isinstance(value, Upcoming):
                continue
            outbox = value.outbox
            if outbox.outputs is not None:
                job.inputs[key] = outbox.outputs[value.key]
            elif (going := self._jobs.get(outbox.call_id)) is not None and going.outbox is outbox:
                raise BackendError(f"the call of task {job.call.task_id!r} takes an output of call "
                                   f"{outbox.call_id!r}, still going, without being lined up behind it")
            else:
                self._jobs.pop(job.call.call_id, None)
                return Unfed(job, TaskError.cancelled(
                    job.call.task_id, f"the call whose {value.key!r} it takes ended without outputs"))
        return None

    def _new_job(self, call: TaskCall, report: Reporter) -> LocalJob:
        """A job for ``call`` with its constants packed; its future is failed already if one cannot be."""
        future: Future[TaskOutcome] = Future()
        future.set_running_or_notify_cancel()
        constants = []
        for key, value in call.constants.items():
            try:
                constants.append(self._constant(call.run_id, value))
            except Exception as exc:  # noqa: BLE001 - an unpicklable constant input
                future.set_result(TaskOutcome(error=wrapped_error(
                    exc, f"the input {key!r} of task {call.task_id!r} could not be pickled")))
                break
        return LocalJob(call, report, future, constants=constants, inputs=dict(call.inputs), outbox=Outbox(call.call_id))

    def _admit(self, job: LocalJob) -> None:
        """Take a new job in (lock held)."""
        if self._closed:
            raise BackendError("the local backend is closed; create a new MaClient")
        self._jobs[job.call.call_id] = job

    def _place(self, job: LocalJob) -> None:
        """Send a job to an idle worker, or queue it (lock held)."""
        worker = self._idle_worker(job.call.gpu_ids or None)
        if worker is None:
            self._queue.append(job)
        else:
            self._send(worker, job)

    def _follow_on(self, job: LocalJob, worker: Worker | None) -> Unfed | None:
        """``job`` ended: start the call lined up behind it, on ``worker`` when given, else anywhere (lock held).

        That call is not started if it takes outputs ``job`` did not make (see :meth:`_fill_in`).
        """
        nxt, job.next = job.next, None
        if nxt is None or self._closed:
            return None
        nxt.behind = None
        if nxt.sent_to is not None:   # it is on a worker already
            holder = nxt.sent_to
            if holder is worker and worker.job is None and not worker.retiring:
                assert worker.ahead[0] is nxt, "calls sent ahead start in the order sent"
                worker.ahead.popleft()
                nxt.sent_to = None
                worker.job = nxt
                nxt.sent_at = time.time()   # when it became the worker's call
                if job.outbox.outputs is not None:   # the outputs it took from ``job`` there, held here as long
                    self._fill_in(nxt)
            # else its worker is being stopped: when it has gone, the call goes elsewhere (_on_worker_exit)
            return None
        unfed = self._fill_in(nxt)
        if unfed is not None:
            return unfed
        if worker is not None and worker.idle and worker.devices == (nxt.call.gpu_ids or None):
            self._send(worker, nxt)
        else:
            self._place(nxt)
        return None

    def stop(self, call_id: str) -> None:
        with self._lock:
            job = self._jobs.get(call_id)
            if job is None:
                return
            reason = TaskError.cancelled(job.call.task_id)
            unfed, unfed_behind = None, []
            if job.behind is not None:   # lined up, not started: the one behind it moves up
                unfed_behind = self._unfeed(job, "was stopped before it started")
                job.behind.next = job.next
                if job.next is not None:
                    job.next.behind = job.behind
                job.behind = job.next = None
                del self._jobs[call_id]
                self._drop(job)
            elif job.sent_to is not None:   # its call ended; it waits on a worker being stopped
                del self._jobs[call_id]
                self._drop(job)
                unfed = self._follow_on(job, None)
            elif job in self._queue:
                self._queue.remove(job)
                del self._jobs[call_id]
                unfed = self._follow_on(job, None)
            else:
                job.stop_reason = reason
                self._kill_running(job)
                return
            self._write_out()
        job.future.set_result(TaskOutcome(error=reason))
        end_unfed(unfed)
        for behind in unfed_behind:
            end_unfed(behind)

    def _unfeed(self, job: LocalJob, why: str) -> list[Unfed]:
        """``job`` will make no outputs: take the calls lined up behind it that take them out (lock held).

        Such a call would never be fed; and one on a worker must never start
        there, where it would find the outputs of the call before ``job``. So
        for a call behind it that takes the outputs of one taken out, and so on.
        Returned for :func:`end_unfed` once the lock is released.
        """
        gone, out = {job.outbox}, []
        while (nxt := job.next) is not None and any(
                isinstance(v, Upcoming) and v.outbox in gone for v in nxt.inputs.values()):
            job.next = nxt.next
            if nxt.next is not None:
                nxt.next.behind = job
            nxt.next = nxt.behind = None
            self._jobs.pop(nxt.call.call_id, None)
            self._drop(nxt)
            gone.add(nxt.outbox)
            out.append(Unfed(nxt, TaskError.cancelled(
                nxt.call.task_id, f"the call of task {job.call.task_id!r}, whose outputs it takes, {why}")))
        return out

    def _drop(self, job: LocalJob) -> None:
        """Take back a call sent behind a worker's call, before it starts (lock held)."""
        holder, job.sent_to = job.sent_to, None
        if holder is not None:
            holder.ahead.remove(job)
            holder.dropping.add(job.call.call_id)   # it takes nothing new until it answers
            self._put(holder, encode(Drop(job.call.call_id)))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._jobs.values())
            self._jobs.clear()
            self._queue.clear()
            for w in self._workers:
                if w.job is not None:
                    w.job.stop_reason = TaskError.cancelled(w.job.call.task_id, _CLOSED)
                    w.kill_group()
                elif not w.retiring:
                    self._retire(w)
            self._write_out()
        self._wake()
        # The I/O thread ends once it has reaped every worker (and killed its group).
        self._io.join(timeout=2.0)
        if self._io.is_alive():  # an idle worker did not exit in time (e.g. a task left a thread running)
            with self._lock:
                for w in self._workers:
                    w.kill_group()
            self._io.join(timeout=5.0)
        for job in pending:
            if not job.future.done():
                job.future.set_result(TaskOutcome(error=TaskError.cancelled(job.call.task_id, _CLOSED)))
        self._wake_r.close()
        self._wake_w.close()
        _packing.remove_files_of(self._owner)  # e.g. of a worker killed while writing one
        _live.discard(self)

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- constants ----------------------------------------------------------------------

    def _constant(self, run_id: str, value: Any) -> Constant:
        """``value`` packed; a large one once per run, so a fan-out that passes one big array packs it once."""
        key = (run_id, id(value))
        held = self._constants.get(key)
        if held is None:
            packed = _packing.pack(value, self._owner)
            packed.own_file()
            held = Constant(value, packed)
            if packed.nbytes >= _CACHED_CONSTANT_BYTES:
                self._constants[key] = held
        return held

    # -- workers --------------------------------------------------------------------

    def _spawn(self, devices: DeviceKey) -> Worker:
        """Start a worker; the I/O thread takes it in on its next pass (lock held)."""
        worker = Worker.start(devices, self._owner)
        self._workers.append(worker)
        self._joining.append(worker)
        self._wake()
        return worker

    def _idle_worker(self, devices: DeviceKey) -> Worker | None:
        """An idle worker for this device set, started or recycled if need be (lock held)."""
        for w in self._workers:
            if w.idle and w.devices == devices:
                return w
        active = [w for w in self._workers if not w.retiring]
        if len(active) >= self.max_workers:
            spare = next((w for w in active if w.idle), None)
            if spare is None:
                return None
            self._retire(spare)
        return self._spawn(devices)

    def _retire(self, worker: Worker) -> None:
        """Tell an idle worker to exit; the I/O thread reaps it when it has (lock held)."""
        worker.retiring = True
        self._put(worker, b"")  # the goodbye frame

    def _kill_running(self, job: LocalJob) -> None:
        """Stop a running call: kill its worker's group (lock held).

        If calls were sent behind it, the I/O thread does it, after reading
        what the worker has sent: the call may have ended there already, its
        result not read yet, and the worker gone on to the next one, which a
        kill would stop midway (and run again elsewhere, never having been
        seen to start). If its result is there, the call has ended and nothing
        is killed.
        """
        for w in self._workers:
            if w.job is job:
                if w.ahead:
                    self._killing[w] = job
                    if threading.current_thread() is not self._io:
                        self._wake()
                else:
                    w.kill_group()
                return

    def _kill_unless_ended(self) -> bool:
        """Carry out the kills that wait for a look at what the worker sent (I/O thread, lock not held).

        A look reads what has arrived, and never waits (a task printing without
        pause, or a worker stopped halfway through a frame, must not hold this
        thread). A result read meanwhile takes the kill back (``_on_done``). One
        whose output frames are still coming puts the kill off (the call has
        ended): ``_on_done`` takes it back when they have come, and it goes
        ahead if they stop coming (``_STALLED_S``). Returns whether the look
        handled anything: what that made the scheduler put still has to be
        written.
        """
        with self._lock:
            killing = list(self._killing.items())
        looked = False
        for worker, job in killing:
            for _ in range(4):
                if worker.job is not job or not worker.reader.readable():
                    break
                looked = True
                if not self._on_readable(worker):
                    break
            with self._lock:
                if self._killing.get(worker) is not job:
                    continue
                if worker.job is job and self._result_coming(worker, job, time.monotonic()):
                    continue   # looked at again when it has come (_on_done takes the kill back), or stalls
                del self._killing[worker]
                if worker.job is job:
                    worker.kill_group()
        return looked

    def _send(self, worker: Worker, job: LocalJob, *, ahead: bool = False) -> None:
        """Hand a job to an idle worker, or (``ahead``) behind the call it runs (lock held)."""
        call = job.call
        code = call.code
        ship = code.key not in worker.known
        packs: list[Any] = [c.packed for c in job.constants]
        packs += job.inputs.values()
        chain = None
        job.chained = ahead and any(isinstance(p, Upcoming) for p in packs)   # made by the call before it there
        if job.chained:
            assert worker.last is not None
            chain = (worker.last.call.call_id, [(i, p.key) for i, p in enumerate(packs) if isinstance(p, Upcoming)])
            descriptors: list[_packing.Descriptor | None] = [
                None if isinstance(p, Upcoming) else p.descriptor() for p in packs]
            packs = [p for p in packs if not isinstance(p, Upcoming)]
        else:
            descriptors = [p.descriptor() for p in packs]
        header = encode(CallHeader(
            call.call_id, call.task_id, code.key, ship, list(call.constants), list(call.inputs),
            descriptors, call.outputs, call.timeout is not None, ahead, chain,
        ))
        worker.known.add(code.key)  # the worker's Done frame says what it did not keep
        if ahead:
            worker.ahead.append(job)
            job.sent_to = worker
        else:
            worker.job = job
        job.sent_at = time.time()
        self._put(worker, header)
        if ship:
            worker.writer.put(code.data)
        _packing.send(worker.writer.put, packs)

    def _put(self, worker: Worker, frame: bytes) -> None:
        """Queue a frame for ``worker``; it goes out with the others at :meth:`_write_out` (lock held)."""
        worker.writer.put(frame)
        self._unsent[worker] = None

    def _write_out(self, *, io: bool = False, only: Worker | None = None) -> None:
        """Write the frames queued for each worker, one write each (lock held).

        The I/O thread writes once per pass, after it has handled everything
        that arrived: the calls that its callbacks (the scheduler) line up
        behind the ones that ended go out together. It writes at once only to
        a worker that may be waiting for what was put (``only``). Any other
        thread writes before it releases the lock. No write waits: a worker
        running a call reads nothing, and may itself be waiting to send its
        result, so what its socket does not take at once is sent by the I/O
        thread as the worker reads it (``_on_writable``), and frames put
        meanwhile go after.
        """
        if only is not None:
            if only in self._unsent:
                del self._unsent[only]
                self._flush(only)
            return
        if not io and threading.current_thread() is self._io:
            return
        unsent, self._unsent = self._unsent, {}
        newly = False
        for w in unsent:
            newly |= self._flush(w)
        if newly and not io:
            self._wake()

    def _flush(self, worker: Worker) -> bool:
        """Send what was put for ``worker``; whether its socket has just stopped taking it (lock held)."""
        try:
            if not worker.writer.flush() and worker not in self._stalled:
                self._stalled[worker] = False   # the I/O thread watches it from its next pass
                return True
        except OSError:
            pass  # the worker died; the I/O thread reports it and fails its jobs
        return False

    def _on_writable(self, worker: Worker) -> None:
        """A worker's socket takes more of what could not be sent at once (I/O thread)."""
        with self._lock:
            try:
                done = worker.writer.flush()
            except OSError:
                done = True   # it died; its end of file comes
            if done and self._stalled.pop(worker, None) is not None:
                self._selector.modify(worker.sock, selectors.EVENT_READ, worker)

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
                    self._selector.register(w.sock, selectors.EVENT_READ, w)
                self._joining.clear()
                for w, watched in self._stalled.items():
                    if not watched:
                        self._selector.modify(w.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, w)
                        self._stalled[w] = True
                deadline = self._enforce_timeouts()
            timeout = max(0.0, deadline - time.monotonic()) if deadline is not None else None
            if self._killing and self._kill_unless_ended():
                # The look handled frames outside the select: what they made the scheduler
                # put waits for the write at the end of this pass, and the clocks they
                # started are not in ``deadline``. So the select only polls.
                timeout = 0.0
            for key, events in self._selector.select(timeout):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                if events & selectors.EVENT_WRITE:
                    self._on_writable(key.data)
                if events & selectors.EVENT_READ:
                    self._on_readable(key.data)
            with self._lock:
                self._write_out(io=True)
        self._selector.close()

    def _on_readable(self, worker: Worker) -> bool:
        """Handle every frame the worker has sent, in one read when the frames are small; whether it is still there.

        Nothing here waits for the worker. A result (``Done``) is handled once
        the frames of its outputs that follow it have all arrived: a worker
        stopped halfway through sending them (SIGSTOP, a debugger) must not hold
        the thread that serves every worker and enforces every timeout.
        """
        reader = worker.reader
        try:
            reader.fill()
        except (EOFError, OSError):
            self._on_worker_exit(worker)
            return False
        while True:
            frame: Frame | None = worker.unread_done
            if frame is None:
                if not reader.has_frame():
                    return True
                frame = decode(reader.recv_bytes())   # whole already: no read
            if isinstance(frame, Done):
                following = _packing.frame_count(frame.descriptors)
                try:
                    while not reader.has_frames(following):
                        if not reader.readable():
                            worker.unread_done, worker.read_at = frame, time.monotonic()
                            return True
                        reader.fill(_FOLLOWING_CHUNK)
                except (EOFError, OSError):
                    self._on_worker_exit(worker)
                    return False
                worker.unread_done = None
            if not self._on_frame(worker, frame):
                return False   # it has gone (it died while sending)

    def _on_frame(self, worker: Worker, frame: Frame) -> bool:
        """Handle one frame of ``worker``; whether it is still there."""
        job = worker.job
        if isinstance(frame, Ready):
            worker.host = frame.host
        elif isinstance(frame, Dropped):
            with self._lock:
                worker.dropping.discard(frame.call_id)
                if worker.idle:
                    self._feed(worker)
        elif not isinstance(frame, (Started, Log, Done)):
            pass   # a worker sends nothing else
        elif job is None or frame.call_id != job.call.call_id:
            # Of a call the worker had started when told to drop it: settled as stopped already.
            if isinstance(frame, Done):
                return self._discard(worker, frame)
            if frame.call_id in worker.dropping:   # still running: stop it as any stopped call
                with self._lock:
                    worker.retiring = True
                    worker.kill_group()
        elif isinstance(frame, Started):
            job.start_clock(time.monotonic())
            self._report_start(worker, job, frame.at)
        elif isinstance(frame, Log):
            job.report(TaskLog(job.call.call_id, frame.stream, frame.text, frame.at))
        elif isinstance(frame, Done):
            return self._on_done(worker, job, frame)
        return True

    def _discard(self, worker: Worker, done: Done) -> bool:
        """Read past the outputs of a call no longer wanted (their shared memory goes with them)."""
        try:
            for p in _packing.receive(worker.reader.recv_bytes, done.descriptors):
                p.own_file()
        except (EOFError, OSError):
            self._on_worker_exit(worker)
            return False
        if done.error is not None:
            with self._lock:
                self._put(worker, encode(Go()))   # no scheduler to wait for: it holds nothing back
        return True

    @staticmethod
    def _report_start(worker: Worker, job: LocalJob, at: float) -> None:
        job.started = True
        job.report(TaskStarted(job.call.call_id, worker.host or socket.gethostname(), worker.proc.pid,
                               job.call.gpu_ids, at))

    def _on_done(self, worker: Worker, job: LocalJob, done: Done) -> bool:
        keys, error, started, finished = done.keys, done.error, done.started, done.finished
        if not job.started:   # a quick call: its start comes with its end (see maze.backends._worker)
            self._report_start(worker, job, started)
        try:
            packs = _packing.receive(worker.reader.recv_bytes, done.descriptors)
        except (EOFError, OSError):
            self._on_worker_exit(worker)
            return False
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
        unfed, unread = None, []
        with self._lock:
            worker.known.difference_update(done.dropped)
            worker.job = None
            self._jobs.pop(job.call.call_id, None)
            if self._killing.get(worker) is job:
                del self._killing[worker]   # it ended before its kill: none (see _kill_running)
            elif job.stop_reason is not None:
                # Stopped (a timeout, a cancel) as it ended: its group is being killed, so the
                # worker takes nothing more; the I/O thread reaps it like a retired one.
                worker.retiring = True
            nxt = job.next
            if outcome.ok:
                job.outbox.outputs = outcome.handles
                unfed = self._follow_on(job, worker)   # at once: the worker need not wait for the scheduler
                if nxt is not None and nxt.chained and worker.job is nxt:
                    self._put(worker, encode(Fed(job.call.call_id)))   # it waits for this to start
            elif error is None and nxt is not None and nxt.sent_to is worker:
                # The worker saw no failure (this side could not read the result): it waits to start a
                # call that takes the outputs (the run has none: that call is taken back), and goes on
                # to any other call sent behind, which runs now: a stop must stop it as such.
                if nxt.chained:
                    unread = self._unfeed(job, "ended with outputs that could not be read")
                unfed = self._follow_on(job, worker)
            if worker.idle:
                self._feed(worker)
            self._write_out(only=worker)   # it may be waiting for this: before the scheduler's turn
        end_unfed(unfed)
        for behind in unread:
            end_unfed(behind)
        job.future.set_result(outcome)
        if not outcome.ok:   # now that the scheduler knows (it may have stopped the next one)
            with self._lock:
                # The worker holds after a failure: what it would run next with the outputs is taken back.
                unfed_behind = self._unfeed(job, "ended without outputs") if error is not None else []
                unfed = self._follow_on(job, worker)
                if worker.idle:
                    self._feed(worker)
                if error is not None and not worker.retiring:
                    self._put(worker, encode(Go()))   # the worker holds its next call until now
            end_unfed(unfed)
            for behind in unfed_behind:
                end_unfed(behind)
        return True

    def _feed(self, worker: Worker) -> None:
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

    def _on_worker_exit(self, worker: Worker) -> None:
        """The worker's socket hit EOF: it exited, was retired, or was killed (I/O thread).

        This thread alone reaps workers, and first kills the worker's group,
        which holds whatever its tasks started and left running. It waits for
        the exit without reaping (``WNOWAIT``), so the pid that names the group
        cannot be reused meanwhile. A worker still alive (its task closed the
        socket) is killed first: the wait must not last as long as its task.
        """
        pid = worker.proc.pid
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                worker.kill_group()   # alive, hence not reaped: the pid is still ours
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            ours = True
        except ChildProcessError:  # reaped behind our back (a SIGCHLD handler): the pid is no longer ours
            ours = False
        with self._lock:
            self._workers.remove(worker)
            worker.retiring = True   # gone: nothing more is sent to it
            if ours:
                worker.kill_group()
            self._unsent.pop(worker, None)   # before its descriptor is closed (and maybe reused)
            self._stalled.pop(worker, None)
            self._killing.pop(worker, None)
            self._selector.unregister(worker.sock)
            worker.sock.close()
            job, worker.job = worker.job, None
            if job is not None:
                self._jobs.pop(job.call.call_id, None)
            ahead, worker.ahead = worker.ahead, deque()
            unfed = None
            for sent in ahead:   # sent behind ``job``, never started: they go elsewhere
                sent.sent_to = sent.sent_at = None
                if sent.behind is None and sent.call.call_id in self._jobs and not self._closed:
                    # ``job`` had ended already (here, as the worker was stopped)
                    unfed = self._fill_in(sent)   # (at most the first: it is behind no other)
                    if unfed is None:
                        self._place(sent)
            if self._queue and not self._closed:
                nxt = self._queue[0]
                replacement = self._idle_worker(nxt.call.gpu_ids or None)
                if replacement is not None:
                    self._send(replacement, self._queue.popleft())
        end_unfed(unfed)
        code = worker.proc.wait()
        if job is None:
            return
        if not job.future.done():
            if not job.started and job.sent_at is not None:
                # It died (or was stopped) before announcing the call: the worker had it, so it
                # is reported started, when it was handed over (see maze.backends._worker).
                self._report_start(worker, job, job.sent_at)
            error = job.stop_reason or TaskError.worker_died(job.call.task_id, f"pid {pid}, {describe_exit(code)}")
            job.future.set_result(TaskOutcome(error=error))
        with self._lock:
            unfed = self._follow_on(job, None)
        end_unfed(unfed)

    def _enforce_timeouts(self) -> float | None:
        """Stop the running jobs past their deadline; when to look again, at the earliest (lock held, I/O thread).

        A job whose result is coming (see :meth:`_result_coming`) has ended and
        is not timed out; whether it still is coming is looked at again once it
        may have stalled, as is a kill that waits for it.
        """
        now = time.monotonic()
        running, looks = [], []
        for w in self._workers:
            job = w.job
            if job is None:
                continue
            if self._result_coming(w, job, now):
                if job.deadline is not None or self._killing.get(w) is job:
                    looks.append(w.read_at + _STALLED_S)   # when it may have stalled
                continue
            running.append(job)
        late, earliest = sweep(running, now)
        for job in late:
            if job.stop_reason is None:  # not stopped already (cancelled)
                job.stop_reason = job.timed_out()
                self._kill_running(job)
        if earliest is not None:
            looks.append(earliest)
        return min(looks, default=None)

    @staticmethod
    def _result_coming(worker: Worker, job: LocalJob, now: float) -> bool:
        """Whether ``job`` has ended and the rest of its result is on its way (I/O thread).

        Its result's first frame is in hand, and the worker has sent more
        within ``_STALLED_S``, or has sent what this thread has not read yet.
        """
        held = worker.unread_done
        return (held is not None and held.call_id == job.call.call_id
                and (now - worker.read_at < _STALLED_S or worker.reader.readable()))


_CLOSED = "its backend was closed"

_live: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for backend in list(_live):
        if backend._pid == os.getpid():   # a forked child must not stop its parent's workers
            backend.close()
