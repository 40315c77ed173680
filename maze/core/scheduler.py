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
from collections import deque
from concurrent.futures import Future
from functools import partial

from .admission import Grant, ResourcePool
from .errors import UnsatisfiableError
from .history import HistoryWriter
from .messages import MessageType
from .plan import Plan
from .protocol import Backend, TaskCall, TaskError, TaskOutcome, TaskStarted, WorkerEvent
from .resources import Capacity, Resources
from .run import RunState, TaskState

_log = logging.getLogger("maze")

_CANCELLED_TYPE = "TaskCancelled"


class Engine:
    """Runs plans on one backend, within one capacity shared by all runs."""

    def __init__(self, backend: Backend, capacity: Capacity, *, history: HistoryWriter | None = None) -> None:
        self.backend = backend
        self.capacity = capacity
        self.history = history
        self._lock = threading.RLock()
        self._pool = ResourcePool(capacity)
        # Ready tasks waiting for resources, one FIFO per resource shape, so that a
        # thousand identical tasks cost one failed fit per pass, not a thousand.
        self._waiting: dict[Resources, deque[tuple[RunState, str]]] = {}
        self._dispatching = False
        self._dispatch_again = False

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

    def start(self, plan: Plan, run_id: str, *, fail_fast: bool = False) -> RunState:
        self.check(plan)
        run = RunState(run_id, plan, self._lock, fail_fast=fail_fast, recorder=self.history)
        if self.history is not None:
            self.history.run_started(run_id, plan)
        with self._lock, self._guard(run):
            if not plan.tasks:
                run.end()
            else:
                self._queue_ready(run)
                self._dispatch()
        return run

    def cancel(self, run: RunState, reason: str = "run cancelled") -> None:
        """Nothing new starts; running attempts are stopped; the run ends as cancelled."""
        with self._lock, self._guard(run):
            if run.ended.is_set() or run.cancelling:
                return
            run.cancelling = True
            self._stop_everything(run, reason, upstream=None)

    # -- the loop -----------------------------------------------------------------

    def _queue_ready(self, run: RunState) -> None:
        for tid in run.sorter.get_ready():
            need = run.plan.tasks[tid].spec.resources
            self._waiting.setdefault(need, deque()).append((run, tid))

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
            run.calls[tid] = call
            run.grants[tid] = grant
            run.states[tid] = TaskState.RUNNING
            future = self.backend.submit(call, partial(self._on_event, run, tid, call.call_id))
            future.add_done_callback(partial(self._on_done, run, tid, call))

    def _first_call(self, run: RunState, tid: str, grant: Grant) -> TaskCall:
        t = run.plan.tasks[tid]
        inputs = {key: run.handles[ref.task_id][ref.key] for key, ref in t.refs.items()}
        for up in {ref.task_id for ref in t.refs.values()}:
            run.consumers[up] -= 1
            if run.consumers[up] == 0:
                del run.handles[up]  # every dependent holds what it needs; free big outputs early
        return TaskCall(
            call_id=f"{run.run_id}:{tid}:{run.attempts[tid]}",
            run_id=run.run_id, task_id=tid, task_name=t.name, attempt=run.attempts[tid],
            func=run.plan.tasks[tid].function, constants=t.constants, inputs=inputs, outputs=t.spec.outputs,
            resources=t.spec.resources, gpu_ids=grant.gpu_ids, timeout=t.spec.options.timeout,
        )

    def _on_event(self, run: RunState, tid: str, call_id: str, event: WorkerEvent) -> None:
        with self._lock, self._guard(run):
            call = run.calls.get(tid)
            if call is None or call.call_id != call_id or run.ended.is_set():
                return  # a late event from an attempt that was already settled
            if isinstance(event, TaskStarted):
                run.started.add(tid)
                extra = {"node_id": event.node_id} if event.node_id else {}
                run.task_msg(
                    MessageType.START_TASK, tid, at=event.at, node=event.node, worker=event.worker,
                    gpu_ids=list(event.gpu_ids), attempt=call.attempt, **extra,
                )
            else:
                run.task_msg(MessageType.TASK_LOG, tid, at=event.at, stream=event.stream, text=event.text)

    def _on_done(self, run: RunState, tid: str, call: TaskCall, future: Future[TaskOutcome]) -> None:
        with self._lock, self._guard(run):
            outcome = future.result()
            self._pool.release(run.grants.pop(tid))
            if run.calls.get(tid) is not call or run.states[tid].terminal:
                self._dispatch()
                return
            if outcome.ok:
                self._succeed(run, tid, outcome)
            elif outcome.error is not None and outcome.error.error_type == _CANCELLED_TYPE:
                self._settle_cancelled(run, tid, outcome.error)
            elif run.attempts[tid] <= run.plan.tasks[tid].spec.options.retries and not run.cancelling:
                self._retry(run, tid, outcome.error)
            else:
                self._fail(run, tid, outcome.error)
            self._dispatch()
            if run.open == 0:
                run.end()

    # -- outcomes -------------------------------------------------------------------

    def _succeed(self, run: RunState, tid: str, outcome: TaskOutcome) -> None:
        result = outcome.result or {}
        run.results[tid] = result
        if run.consumers[tid]:
            run.handles[tid] = outcome.handles
        duration = (outcome.finished_at or 0.0) - (outcome.started_at or 0.0)
        run.task_msg(MessageType.FINISH_TASK, tid, at=outcome.finished_at, result=result, duration=duration)
        run.settle(tid, TaskState.FINISHED)
        run.sorter.done(tid)
        if not run.cancelling:
            self._queue_ready(run)

    def _fail(self, run: RunState, tid: str, error: TaskError | None) -> None:
        error = error or TaskError.simple("RuntimeError", "the task failed without an error")
        run.errors[tid] = error
        run.task_msg(
            MessageType.TASK_EXCEPTION, tid, result=error.traceback, error_type=error.error_type,
            error=error.error, attempt=run.attempts[tid],
        )
        run.settle(tid, TaskState.FAILED)
        for child in run.plan.descendants(tid):
            if run.states[child] is TaskState.PENDING:
                self._skip(run, child, f"upstream task {tid!r} failed", tid, TaskState.SKIPPED)
        if run.fail_fast and not run.cancelling:
            run.cancelling = True
            self._stop_everything(run, f"fail_fast: task {tid!r} failed", upstream=tid)

    def _retry(self, run: RunState, tid: str, error: TaskError | None) -> None:
        delay = run.plan.tasks[tid].spec.options.retry_delay
        run.task_msg(
            MessageType.TASK_RETRY, tid, attempt=run.attempts[tid],
            error=f"{error.error_type}: {error.error}" if error else "", delay=delay,
        )
        run.states[tid] = TaskState.RETRYING
        timer = threading.Timer(delay, self._requeue, (run, tid))
        timer.daemon = True
        run.timers[tid] = timer
        timer.start()

    def _requeue(self, run: RunState, tid: str) -> None:
        with self._lock, self._guard(run):
            if run.timers.pop(tid, None) is None or run.cancelling:
                return
            run.states[tid] = TaskState.PENDING
            need = run.plan.tasks[tid].spec.resources
            self._waiting.setdefault(need, deque()).append((run, tid))
            self._dispatch()

    def _skip(self, run: RunState, tid: str, reason: str, upstream: str | None, state: TaskState) -> None:
        run.skip_reasons[tid] = reason
        run.task_msg(
            MessageType.TASK_SKIPPED, tid, reason=reason, upstream=upstream,
            cancelled=state is TaskState.CANCELLED,
        )
        run.settle(tid, state)

    def _settle_cancelled(self, run: RunState, tid: str, error: TaskError) -> None:
        run.errors[tid] = error
        run.task_msg(
            MessageType.TASK_EXCEPTION, tid, result=error.traceback, error_type=error.error_type,
            error=error.error, attempt=run.attempts[tid],
        )
        run.settle(tid, TaskState.CANCELLED)

    def _stop_everything(self, run: RunState, reason: str, upstream: str | None) -> None:
        for tid, timer in list(run.timers.items()):
            timer.cancel()
            del run.timers[tid]
            self._skip(run, tid, reason, upstream, TaskState.CANCELLED)
        for tid, state in run.states.items():
            if state is TaskState.PENDING:
                self._skip(run, tid, reason, upstream, TaskState.CANCELLED)
        for call in list(run.calls.values()):
            self.backend.stop(call.call_id)  # its future settles the task as cancelled
        if run.open == 0:
            run.end()

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
                        run.errors[tid] = error
                        run.settle(tid, TaskState.CANCELLED)
            finally:
                run.end()


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
