"""The scheduler: turns plans into backend calls, one completion at a time.

Design
------
There is no scheduler thread. :meth:`Engine.start` admits the first ready
tasks and returns; from then on the run advances inside the completion
callbacks of the backend's futures, as in dask's ``local.get_async`` but
driven by ``Future.add_done_callback`` instead of a result queue. Each
callback, under the engine lock:

1. gives the task's resources back to the shared :class:`ResourcePool`;
2. records the task's messages in its :class:`RunState`;
3. marks it done in the run's ``graphlib.TopologicalSorter`` (or skips its
   descendants, or schedules a retry);
4. admits whatever is ready and now fits, across all runs of the client.

Admission is first come, first served within one resource shape; a small
task may start before a larger one that does not fit yet (backfilling).

``finish_workflow`` is always sent: when the last task settles, when a run is
cancelled, and, through :meth:`Engine._guard`, when the scheduler itself hits
an unexpected error.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from functools import partial

from .admission import Grant, ResourcePool
from .errors import BackendError, UnsatisfiableError
from .history import Dropped, HistoryReader, HistoryWriter, Stored
from .plan import Plan
from .protocol import Backend, Failure, ResultStore, TaskCall, TaskError, TaskOutcome, TaskStarted, WorkerEvent
from .resources import Capacity, Resources
from .run import RunState, TaskState
from .shipping import ShippedCode
from .snapshot import Snapshot

_log = logging.getLogger("maze")

_NO_CODE = ShippedCode("", b"")  # in calls whose function could not be pickled (never submitted)


class Engine:
    """Runs plans on one backend, within one capacity shared by all runs."""

    def __init__(
        self, backend: Backend, capacity: Capacity, *,
        history: HistoryWriter | None = None, store: ResultStore | None = None,
    ) -> None:
        self.backend = backend
        self.capacity = capacity
        self.history = history
        self.store = store
        self._lock = threading.RLock()
        self._pool = ResourcePool(capacity)
        # Ready tasks waiting for resources, one FIFO per resource shape, so that a
        # thousand identical tasks cost one failed fit per pass, not a thousand.
        self._waiting: dict[Resources, deque[tuple[RunState, str]]] = {}
        self._dispatching = False
        self._dispatch_again = False
        self._live: dict[str, RunState] = {}    # runs not ended yet, by id (for close())
        # Every run started here that someone (a workflow's records) still holds.
        self._runs: weakref.WeakValueDictionary[str, RunState] = weakref.WeakValueDictionary()
        self._closed = False

    # -- public -----------------------------------------------------------------

    def check(self, plan: Plan) -> None:
        """Raise :class:`UnsatisfiableError` for a task that could never start."""
        for t in plan.tasks.values():
            why = self._pool.why_never(t.spec.resources)
            if why:
                raise UnsatisfiableError(
                    f"task {t.task_id!r} can never run: {why} "
                    f"(it asks for {_demand(t.spec.resources)}; the capacity is "
                    f"{self.capacity.describe()})"
                )

    def find_run(self, run_id: str, *, values: bool = True) -> RunState | None:
        """The one way to look a run up: one this engine started (while a workflow holds it),
        else one rebuilt from the history; ``None`` if neither has it.

        ``values=False`` reads a recorded run without loading its pickled result
        values (they read as short descriptions): enough to draw it.
        """
        run = self._runs.get(run_id)
        if run is not None or self.history is None:
            return run
        self.history.flush()
        reader = HistoryReader(self.history.path)
        return reader.replay(run_id, values=values) if reader.exists(run_id) else None

    def start(self, plan: Plan, run_id: str, *, fail_fast: bool = False, resume_from: RunState | None = None) -> RunState:
        """Start a run and return at once.

        Only what must see the caller's world as it is now happens here: the
        capacity check (an error the caller must get) and the run's
        :class:`~maze.core.snapshot.Snapshot` (its code and a copy of its
        constant inputs). Hashing the inputs (a 200 MB array takes a while),
        deciding what an earlier run already did, and submitting happen in a thread.
        """
        if self._closed:
            raise BackendError("this MaClient is closed; create a new MaClient to run workflows")
        self.check(plan)
        run = RunState(run_id, plan, self._lock, fail_fast=fail_fast, recorder=self.history)
        run.snapshot = Snapshot.take(plan)
        run.on_interrupt = partial(self.cancel, run, "interrupted while waiting")
        with self._lock:
            self._live[run_id] = run
            self._runs[run_id] = run
        if self.history is not None:
            self.history.run_started(run_id, plan)
        threading.Thread(target=self._begin, args=(run, resume_from), name=f"maze-start-{run_id}", daemon=True).start()
        return run

    def _begin(self, run: RunState, resume_from: RunState | None) -> None:
        with self._guard(run):
            try:
                run.fingerprints = run.snapshot.fingerprints(run.plan)
                if resume_from is not None:
                    resume_from.prepared.wait()  # its fingerprints, when it is itself just starting
                    self._plan_reuse(run, resume_from)
            finally:
                run.prepared.set()
            with self._lock:
                if run.ended.is_set():
                    return  # cancelled (or the client closed) while we prepared
                if run.plan.tasks:
                    self._queue_ready(run)
                    self._dispatch()
                if run.open == 0:  # nothing to run, or everything reused
                    self._end(run)

    def cancel(self, run: RunState, reason: str = "run cancelled") -> None:
        """Nothing new starts; running attempts are stopped; the run ends as cancelled."""
        with self._lock, self._guard(run):
            if run.ended.is_set() or run.cancelling:
                return
            run.cancelling = True
            self._stop_everything(run, reason, upstream=None)

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new runs, cancel the runs still going and wait (bounded) until they have ended.

        Called before the backend closes, so that every task of those runs ends
        with a terminal message saying it was cancelled, not that its worker died.
        """
        with self._lock:
            self._closed = True
            live = list(self._live.values())
        for run in live:
            self.cancel(run, "the client was closed")
        deadline = time.monotonic() + timeout
        for run in live:
            run.ended.wait(max(0.0, deadline - time.monotonic()))

    def _end(self, run: RunState) -> None:
        run.end()
        self._live.pop(run.run_id, None)

    # -- the loop -----------------------------------------------------------------

    def _plan_reuse(self, run: RunState, old: RunState) -> None:
        """Decide, per task, whether ``old``'s result stands for this run, and say why."""
        for tid, fp in run.fingerprints.items():
            if tid not in old.plan.tasks:
                run.reasons[tid] = f"not in run {old.run_id}"
            elif old.states[tid] is not TaskState.FINISHED:
                run.reasons[tid] = f"it did not finish in run {old.run_id} ({old.states[tid].value})"
            elif tid not in old.fingerprints:
                run.reasons[tid] = f"run {old.run_id} recorded no fingerprint for it"
            elif (why := fp.why_different(old.fingerprints[tid])) is not None:
                run.reasons[tid] = why
            elif any(isinstance(v, (Dropped, Stored)) for v in old.results[tid].values()):
                run.reasons[tid] = "its result was not kept in the history (too large, or not picklable)"
            else:
                run.reusable[tid] = (old.results[tid], f"run {old.run_id}")
                run.reasons[tid] = f"reused: unchanged since run {old.run_id}"

    def _queue_ready(self, run: RunState) -> None:
        ready = run.sorter.get_ready()
        while ready:
            later = []
            for tid in ready:
                if not self._reuse(run, tid):
                    need = run.plan.tasks[tid].spec.resources
                    self._waiting.setdefault(need, deque()).append((run, tid))
                else:
                    later.append(tid)
            # A reused task is done at once, which may make its dependents ready.
            ready = run.sorter.get_ready() if later else ()

    def _reuse(self, run: RunState, tid: str) -> bool:
        """Settle ``tid`` from an earlier run or the result cache, if either holds it."""
        found = run.reusable.get(tid)
        if found is None and self.store is not None and run.plan.tasks[tid].spec.options.cache:
            cached = self.store.get(run.fingerprints[tid].digest)
            if cached is not None:
                found = (cached, "the result cache")
                run.reasons[tid] = f"reused: in the result cache ({run.fingerprints[tid]})"
            else:
                run.reasons.setdefault(tid, f"not in the result cache yet ({run.fingerprints[tid]})")
        if found is None:
            run.reasons.setdefault(tid, "ran: nothing to reuse")
            return False
        result, source = found
        run.finish(tid, result, at=None, duration=0.0, reused_from=source)
        run.sorter.done(tid)
        return True

    def _dispatch(self) -> None:
        # Callbacks of futures that are already done run inside submit(); this
        # guard turns that re-entry into one more pass of the outer loop.
        if self._dispatching:
            self._dispatch_again = True
            return
        self._dispatching = True
        try:
            again = True
            while again:
                self._dispatch_again = False
                for need, queue in list(self._waiting.items()):
                    while queue:
                        run, tid = queue[0]
                        if run.cancelling or run.states[tid].terminal:
                            queue.popleft()
                            continue
                        grant = self._pool.try_acquire(need)
                        if grant is None:
                            break
                        queue.popleft()
                        self._launch(run, tid, grant)
                    if not queue:
                        del self._waiting[need]
                again = self._dispatch_again
        finally:
            self._dispatching = False

    def _launch(self, run: RunState, tid: str, grant: Grant) -> None:
        with self._guard(run):
            run.attempts[tid] += 1
            previous = run.calls.get(tid)
            if previous is None:
                call = self._first_call(run, tid, grant)
            else:
                call = dataclasses.replace(
                    previous, attempt=run.attempts[tid], gpu_ids=grant.gpu_ids,
                    call_id=f"{run.run_id}:{tid}:{run.attempts[tid]}",
                )
            run.launch(tid, call, grant)
            code = run.snapshot.code[tid]
            if isinstance(code, TaskError):  # nothing a worker could run: fail like an attempt would
                future: Future[TaskOutcome] = Future()
                future.set_result(TaskOutcome(error=code))
            else:
                future = self.backend.submit(call, partial(self._on_event, run, tid, call.call_id))
            future.add_done_callback(partial(self._on_done, run, tid, call))

    def _first_call(self, run: RunState, tid: str, grant: Grant) -> TaskCall:
        t = run.plan.tasks[tid]
        code = run.snapshot.code[tid]
        if isinstance(code, TaskError):
            code = _NO_CODE
        # Constants as they were at run(); outputs of reused tasks are plain values
        # (no backend holds them), passed as constants too.
        constants = {key: frozen.value for key, frozen in run.snapshot.constants[tid].items()} | {
            key: run.results[ref.task_id][ref.key] for key, ref in t.refs.items() if ref.task_id in run.reused
        }
        inputs = {key: run.handles[ref.task_id][ref.key] for key, ref in t.refs.items() if ref.task_id not in run.reused}
        for up in {ref.task_id for ref in t.refs.values()} - run.reused:
            run.consumers[up] -= 1
            if run.consumers[up] == 0:
                del run.handles[up]  # every dependent holds what it needs; free big outputs early
        return TaskCall(
            call_id=f"{run.run_id}:{tid}:{run.attempts[tid]}",
            run_id=run.run_id, task_id=tid, task_name=t.name, attempt=run.attempts[tid],
            func=t.function, code=code, constants=constants, inputs=inputs, outputs=t.spec.outputs,
            resources=t.spec.resources, gpu_ids=grant.gpu_ids, timeout=t.spec.options.timeout,
        )

    def _on_event(self, run: RunState, tid: str, call_id: str, event: WorkerEvent) -> None:
        with self._lock, self._guard(run):
            call = run.calls.get(tid)
            if call is None or call.call_id != call_id or run.ended.is_set():
                return  # a late event from an attempt that was already settled
            if isinstance(event, TaskStarted):
                run.start(tid, event, call.attempt)
            else:
                run.output(tid, event)

    def _on_done(self, run: RunState, tid: str, call: TaskCall, future: Future[TaskOutcome]) -> None:
        with self._lock, self._guard(run):
            outcome = future.result()
            self._pool.release(run.grants.pop(tid))
            if run.calls.get(tid) is not call or run.states[tid].terminal:
                self._dispatch()
                return
            if outcome.ok:
                self._succeed(run, tid, outcome)
            elif outcome.error is not None and outcome.error.kind is Failure.CANCELLED:
                run.stop(tid, outcome.error)
            elif run.attempts[tid] <= run.plan.tasks[tid].spec.options.retries and not run.cancelling:
                self._retry(run, tid, outcome.error)
            else:
                self._fail(run, tid, outcome.error)
            self._dispatch()
            if run.open == 0:
                self._end(run)

    # -- outcomes -------------------------------------------------------------------

    def _succeed(self, run: RunState, tid: str, outcome: TaskOutcome) -> None:
        result = outcome.result or {}
        if run.consumers[tid]:
            run.handles[tid] = outcome.handles
        duration = (outcome.finished_at or 0.0) - (outcome.started_at or 0.0)
        run.finish(tid, result, at=outcome.finished_at, duration=duration)
        fp = run.fingerprints[tid]
        if self.store is not None and run.plan.tasks[tid].spec.options.cache and fp.inputs:
            try:
                self.store.put(fp.digest, dict(result))
            except Exception:  # noqa: BLE001 - an unpicklable result is simply not cached
                _log.warning("maze: the result of task %r could not be cached", tid, exc_info=True)
        run.sorter.done(tid)
        if not run.cancelling:
            self._queue_ready(run)

    def _fail(self, run: RunState, tid: str, error: TaskError | None) -> None:
        run.fail(tid, error or TaskError.simple("RuntimeError", "the task failed without an error"))
        for child in run.plan.descendants(tid):
            if run.states[child] is TaskState.PENDING:
                run.skip(child, f"upstream task {tid!r} failed", tid, cancelled=False)
        if run.fail_fast and not run.cancelling:
            run.cancelling = True
            self._stop_everything(run, f"fail_fast: task {tid!r} failed", upstream=tid)

    def _retry(self, run: RunState, tid: str, error: TaskError | None) -> None:
        delay = run.plan.tasks[tid].spec.options.retry_delay
        timer = threading.Timer(delay, self._requeue, (run, tid))
        timer.daemon = True
        run.retry(tid, error, delay, timer)
        timer.start()

    def _requeue(self, run: RunState, tid: str) -> None:
        with self._lock, self._guard(run):
            if run.timers.pop(tid, None) is None or run.cancelling:
                return
            run.requeue(tid)
            need = run.plan.tasks[tid].spec.resources
            self._waiting.setdefault(need, deque()).append((run, tid))
            self._dispatch()

    def _stop_everything(self, run: RunState, reason: str, upstream: str | None) -> None:
        for tid, timer in list(run.timers.items()):
            timer.cancel()
            del run.timers[tid]
            run.skip(tid, reason, upstream, cancelled=True)
        for tid, state in run.states.items():
            if state is TaskState.PENDING:
                run.skip(tid, reason, upstream, cancelled=True)
        for call in list(run.calls.values()):
            self.backend.stop(call.call_id)  # its future settles the task as cancelled
        if run.open == 0:
            self._end(run)

    def _guard(self, run: RunState) -> _Guard:
        return _Guard(self, run)

    def _abort(self, run: RunState, exc: BaseException) -> None:
        """The scheduler itself failed: end the run rather than leave it hanging."""
        _log.error("maze scheduler error in run %s", run.run_id, exc_info=exc)
        with self._lock:
            try:
                for call in list(run.calls.values()):
                    self.backend.stop(call.call_id)
                error = TaskError.simple(type(exc).__name__, f"internal scheduler error: {exc}")
                for tid, state in run.states.items():
                    if not state.terminal:
                        run.stop(tid, error)
            finally:
                self._end(run)


class _Guard:
    """``with engine._guard(run):`` ends ``run`` if the block raises (a class: it is on the hot path)."""

    __slots__ = ("engine", "run")

    def __init__(self, engine: Engine, run: RunState) -> None:
        self.engine = engine
        self.run = run

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        self.engine._abort(self.run, exc)
        return isinstance(exc, Exception)  # swallow errors; let KeyboardInterrupt and friends through


def _demand(need: Resources) -> str:
    return ", ".join(f"{k}={v}" for k, v in need.as_dict().items())
