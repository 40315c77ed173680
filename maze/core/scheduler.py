"""The scheduler: turns plans into backend calls, one completion at a time.

Design
------
There is no scheduler thread. :meth:`Engine.start` admits the first ready
tasks and returns; from then on the run advances inside the completion
callbacks of the backend's futures, as in dask's ``local.get_async`` but
driven by ``Future.add_done_callback`` instead of a result queue. Each
callback, under the engine lock:

1. gives the task's resources back to the shared :class:`ResourcePool`;
2. moves the task on in its :class:`RunState` (a transition records the message);
3. marks it done in the run's ``graphlib.TopologicalSorter`` (or skips its
   descendants, or schedules a retry);
4. admits whatever is ready and now fits, across all runs of the client.

The run's state is its :class:`RunState`, which readers see; what only the
scheduler needs to drive a run (the sorter, output handles waiting for their
dependents, resource grants, the current attempt of each task, retry timers)
is a :class:`~maze.core.work.Work` beside it, which readers never see.

Admission is first come, first served within one resource shape; a small
task may start before a larger one that does not fit yet (backfilling).

Submitting ahead
----------------
On a backend that resolves handles of submitted calls
(:class:`~maze.core.protocol.EagerBackend`, Ray) whose capacity it manages
itself, a task is submitted as soon as each of its upstream tasks is finished
or *submitted*, with the upstream calls' handles as its inputs, so that the
backend resolves the dependency worker to worker and the driver is off the
critical path. Such a task stays ``PENDING`` in its run (it is "ahead"): what
it reports (its start, its output, its outcome) is held in its run's
:class:`~maze.core.work.Work` and replayed when the sorter says it is ready,
i.e. after the ``finish_task`` of every upstream task, so the message stream
reads exactly as when it was submitted then. When an upstream task fails, the ahead task is skipped like
any pending one (the backend keeps its body from running); on cancel it is
stopped in the backend and skipped. Not submitted ahead, to keep their
semantics: the dependents of a task that may retry (they would be bound to the
outputs of a failed attempt; they are submitted when it finishes, as on other
backends), and tasks with ``cache=True`` or reusable from ``resume_from`` (the
reuse is decided when the task is ready).

Lining up
---------
Where the backend can line a call up behind another and admission is the
scheduler's (the local backend), quick calls share one grant, one after the
other, and a quick task's one dependent waiting for it alone goes behind it at
once: :mod:`maze.core.lining` decides which, :meth:`Engine._line_up` and
:meth:`Engine._line_dependent` submit them. Such a dependent is ahead until its
upstream task finishes here, exactly as above.

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

from .admission import ResourcePool
from .errors import BackendError, UnsatisfiableError
from .history import HistoryReader, HistoryWriter
from .lining import Lining
from .plan import Plan
from .protocol import (
    Backend,
    EagerBackend,
    Failure,
    LiningBackend,
    ResultStore,
    Submitted,
    TaskCall,
    TaskError,
    TaskOutcome,
    TaskStarted,
    WorkerEvent,
)
from .resources import Capacity, Resources
from .run import RunState, TaskState
from .snapshot import Snapshot
from .work import Slot, Work

_log = logging.getLogger("maze")


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
        self._waiting: dict[Resources, deque[tuple[Work, str]]] = {}
        self._dispatching = False
        self._dispatch_again = False
        self._live: dict[str, Work] = {}       # runs not ended yet, by id (for cancel() and close())
        # Every run started here that someone (a workflow's records) still holds.
        self._runs: weakref.WeakValueDictionary[str, RunState] = weakref.WeakValueDictionary()
        self._closed = False
        # Submit dependents ahead only where the backend says it can, and queues by resources itself:
        # a task waiting for its upstream tasks must not hold resources of this engine's pool.
        self._ahead: EagerBackend | None = (
            backend if isinstance(backend, EagerBackend) and backend.resolves_submitted and capacity.managed else None
        )
        # Line quick tasks up behind each other where the backend can, and admission is ours.
        self._lining: Lining | None = (
            Lining(backend) if isinstance(backend, LiningBackend) and not capacity.managed else None
        )

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
        snapshot = Snapshot.take(plan)
        run = RunState(run_id, plan, self._lock, fail_fast=fail_fast, recorder=self.history,
                       on_interrupt=lambda: self.cancel(run, "interrupted while waiting"))
        work = Work.of(run, snapshot, eager=self._ahead is not None, lining=self._lining is not None)
        with self._lock:
            self._live[run_id] = work
            self._runs[run_id] = run
        if self.history is not None:
            self.history.run_started(run_id, plan)
        threading.Thread(target=self._begin, args=(work, resume_from), name=f"maze-start-{run_id}", daemon=True).start()
        return run

    def _begin(self, work: Work, resume_from: RunState | None) -> None:
        run = work.run
        with self._guard(work):
            try:
                run.prepare(work.snapshot.fingerprints(run.plan))
                if resume_from is not None:
                    resume_from.prepared.wait()  # its fingerprints, when it is itself just starting
                    work.plan_reuse(resume_from)
            finally:
                run.prepared.set()
            with self._lock:
                if run.ended.is_set():
                    return  # cancelled (or the client closed) while we prepared
                if run.plan.tasks:
                    self._queue_ready(work)
                    self._dispatch()
                if run.open == 0:  # nothing to run, or everything reused
                    self._end(work)

    def cancel(self, run: RunState, reason: str = "run cancelled") -> None:
        """Nothing new starts; running attempts are stopped; the run ends as cancelled."""
        with self._lock:
            work = self._live.get(run.run_id)
            if work is None or run.ended.is_set() or run.cancelling:
                return
            with self._guard(work):
                run.cancel()
                self._stop_everything(work, reason, upstream=None)

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new runs, cancel the runs still going and wait (bounded) until they have ended.

        Called before the backend closes, so that every task of those runs ends
        with a terminal message saying it was cancelled, not that its worker died.
        """
        with self._lock:
            self._closed = True
            live = [work.run for work in self._live.values()]
        for run in live:
            self.cancel(run, "the client was closed")
        deadline = time.monotonic() + timeout
        for run in live:
            run.ended.wait(max(0.0, deadline - time.monotonic()))

    def _end(self, work: Work) -> None:
        work.run.end()
        self._live.pop(work.run.run_id, None)

    # -- the loop -----------------------------------------------------------------

    def _queue_ready(self, work: Work) -> None:
        ready = work.sorter.get_ready()
        while ready:
            later = []
            for tid in ready:
                if tid in work.ahead:
                    self._promote(work, tid)
                elif not self._reuse(work, tid):
                    need = work.run.plan.tasks[tid].spec.resources
                    self._waiting.setdefault(need, deque()).append((work, tid))
                else:
                    later.append(tid)
                    if work.eager:
                        self._upstream_settled(work, tid)
            # A reused task is done at once, which may make its dependents ready.
            ready = work.sorter.get_ready() if later else ()
        if work.outcomes:
            self._drain(work)

    # -- submitting ahead ------------------------------------------------------------

    def _upstream_settled(self, work: Work, tid: str) -> None:
        """``tid`` was submitted for good, or finished: its dependents may now be submitted ahead."""
        if tid in work.counted:
            return
        work.counted.add(tid)
        # A work list, not recursion: submitting a chain ahead walks it to its end.
        todo = [tid]
        while todo:
            up = todo.pop()
            for child in work.below[up]:
                work.unsettled[child] -= 1
                if work.unsettled[child] == 0 and work.can_go_ahead(child):
                    if self._launch_ahead(work, child) and child not in work.counted:
                        work.counted.add(child)
                        todo.append(child)

    def _launch_ahead(self, work: Work, tid: str) -> bool:
        """Submit ``tid`` before its upstream tasks finish; say whether it is solid (its dependents may follow)."""
        grant = self._pool.try_acquire(work.run.plan.tasks[tid].spec.resources)
        assert grant is not None, "submitting ahead needs a capacity the backend manages"
        work.ahead.add(tid)
        work.run.explain(tid, "ran: nothing to reuse", replace=False)
        self._launch(work, tid, Slot(grant))
        return tid in work.solid

    def _promote(self, work: Work, tid: str) -> None:
        """Every upstream task of ahead task ``tid`` finished: it counts as submitted now; replay what it reported."""
        work.ahead.discard(tid)
        work.run.launch(tid)
        call = work.calls[tid]
        for event in work.held.pop(tid, ()):
            work.apply(tid, call, event)
        held = work.held_done.pop(tid, None)
        if held is not None:
            work.outcomes.append((tid, *held))
        elif self._lining is not None:
            self._line_dependent(work, tid)

    def _reuse(self, work: Work, tid: str) -> bool:
        """Settle ``tid`` from an earlier run or the result cache, if either holds it."""
        run = work.run
        found = work.reusable.get(tid)
        if found is None and self.store is not None and run.plan.tasks[tid].spec.options.cache:
            fp = run.fingerprints[tid]
            cached = self.store.get(fp.digest)
            if cached is not None:
                found = (cached, "the result cache")
                run.explain(tid, f"reused: in the result cache ({fp})")
            else:
                run.explain(tid, f"not in the result cache yet ({fp})", replace=False)
        if found is None:
            run.explain(tid, "ran: nothing to reuse", replace=False)
            return False
        result, source = found
        run.finish(tid, result, at=None, duration=0.0, reused_from=source)
        work.sorter.done(tid)
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
                    launched = []
                    while queue:
                        work, tid = queue[0]
                        if work.run.cancelling or work.run.states[tid].terminal:
                            queue.popleft()
                            continue
                        grant = self._pool.try_acquire(need)
                        if grant is None:
                            break
                        queue.popleft()
                        slot = Slot(grant)
                        self._launch(work, tid, slot)
                        launched.append(slot)
                    for slot in launched:   # no room left: the next ones wait on a worker, not here
                        self._line_up(slot, need)
                    if not queue:
                        self._waiting.pop(need, None)
                again = self._dispatch_again
        finally:
            self._dispatching = False

    def _line_up(self, slot: Slot, need: Resources) -> None:
        """Line waiting tasks of shape ``need`` up behind the slot's last call (:meth:`Lining.behind`),
        unless one of them can have resources of its own."""
        lining = self._lining
        if lining is None or not lining.lines_up(slot):
            return
        queue = self._waiting.get(need)
        if not queue:
            return
        room = self._pool.try_acquire(need)
        if room is not None:   # the next one can have resources of its own (_dispatch gives them)
            self._pool.release(room)
            return
        for work, tid in lining.behind(slot, queue):   # an emptied queue is dropped by _dispatch
            self._launch(work, tid, slot, behind=slot.line[-1].call_id)

    def _line_dependent(self, work: Work, tid: str) -> None:
        """Line up, behind quick task ``tid``'s call, the dependent :meth:`Lining.dependent` picks.

        It takes ``tid``'s outputs as they come (``upcoming_outputs``). Until
        ``tid`` finishes here the dependent is ahead (see the module docstring):
        pending in its run, what it reports held. One link at a time: the next
        when it is promoted.
        """
        assert self._lining is not None
        child = self._lining.dependent(work, tid)
        if child is None:
            return
        call = work.calls[tid]
        upcoming = self._lining.backend.upcoming_outputs(call.call_id)
        if upcoming is None:   # it has ended: the dependent goes the usual way
            return
        work.ahead.add(child)
        work.run.explain(child, "ran: nothing to reuse", replace=False)
        # Only while the call is built: ``tid`` has not finished, so it has no handles of its
        # own; its other dependents get its real ones when it does (_succeed).
        work.handles[tid] = upcoming
        self._launch(work, child, work.grants[tid], behind=call.call_id)
        work.handles.pop(tid, None)

    def _launch(self, work: Work, tid: str, slot: Slot, behind: str | None = None) -> None:
        run = work.run
        grant = slot.grant
        with self._guard(work):
            work.attempts[tid] += 1
            attempt = work.attempts[tid]
            previous = work.calls.get(tid)
            if previous is None:
                call = work.first_call(tid, grant)
            else:
                call = dataclasses.replace(previous, attempt=attempt, gpu_ids=grant.gpu_ids,
                                           call_id=f"{run.run_id}:{tid}:{attempt}")
            work.calls[tid] = call
            work.grants[tid] = slot
            slot.line.append(call)
            if tid not in work.ahead:
                run.launch(tid)
            code = work.snapshot.code[tid]
            submitted: Submitted | None = None
            if isinstance(code, TaskError):  # nothing a worker could run: fail like an attempt would
                future: Future[TaskOutcome] = Future()
                future.set_result(TaskOutcome(error=code))
            elif work.eager and self._ahead is not None:
                future, submitted = self._ahead.submit_ahead(call, partial(self._on_event, work, tid, call.call_id))
            elif behind is not None and self._lining is not None:
                future = self._lining.backend.submit_behind(call, partial(self._on_event, work, tid, call.call_id), behind)
            else:
                future = self.backend.submit(call, partial(self._on_event, work, tid, call.call_id))
            if submitted is not None and not run.plan.tasks[tid].spec.options.retries:
                # Its outputs are final once submitted: dependents may take them now.
                work.solid[tid] = submitted
                if work.consumers[tid]:
                    work.handles[tid] = submitted.outputs
            future.add_done_callback(partial(self._on_done, work, tid, call))
            if tid in work.solid and tid not in work.ahead:
                self._upstream_settled(work, tid)
            elif self._lining is not None and tid not in work.ahead and not future.done():
                self._line_dependent(work, tid)

    def _on_event(self, work: Work, tid: str, call_id: str, event: WorkerEvent) -> None:
        with self._lock, self._guard(work):
            call = work.calls.get(tid)
            if call is None or call.call_id != call_id or work.run.ended.is_set() or work.run.states[tid].terminal:
                return  # a late event from an attempt that was already settled (or a skipped ahead task)
            if tid in work.ahead:  # its upstream tasks have not all finished here yet: say it later
                work.held.setdefault(tid, []).append(event)
                return
            work.apply(tid, call, event)

    def _on_done(self, work: Work, tid: str, call: TaskCall, future: Future[TaskOutcome]) -> None:
        run = work.run
        with self._lock, self._guard(work):
            outcome = future.result()
            self._release(work.grants.pop(tid), call, outcome)
            if work.calls.get(tid) is not call or run.states[tid].terminal:
                if work.calls.get(tid) is call:  # an ahead task skipped meanwhile: forget it
                    del work.calls[tid]
                    work.held.pop(tid, None)
                self._dispatch()
                return
            if tid in work.stopping:  # an ahead task stopped with its run
                self._conclude_stopped_ahead(work, tid, call)
                self._dispatch()
                if run.open == 0:
                    self._end(work)
                return
            if tid in work.ahead:  # concluded when its upstream tasks have finished here (see _promote)
                work.held_done[tid] = (call, outcome)
                return
            work.outcomes.append((tid, call, outcome))
            self._drain(work)
            self._dispatch()
            if run.open == 0:
                self._end(work)

    def _release(self, slot: Slot, call: TaskCall, outcome: TaskOutcome) -> None:
        """A call ended: give its resources back, or keep them for the call lined up behind it and line up one more."""
        if self._lining is not None:
            self._lining.learn(call, outcome)
        slot.line = [c for c in slot.line if c is not call]
        if not slot.line:
            self._pool.release(slot.grant)
        else:
            self._line_up(slot, slot.grant.resources)

    def _drain(self, work: Work) -> None:
        """Conclude the outcomes waiting, in order, including those that concluding one releases (no recursion)."""
        if work.draining:
            return
        work.draining = True
        try:
            while work.outcomes:
                tid, call, outcome = work.outcomes.popleft()
                if work.calls.get(tid) is call and not work.run.states[tid].terminal:
                    self._conclude(work, tid, call, outcome)
        finally:
            work.draining = False

    def _conclude(self, work: Work, tid: str, call: TaskCall, outcome: TaskOutcome) -> None:
        run = work.run
        if outcome.ok:
            self._succeed(work, tid, outcome)
        elif outcome.error is not None and outcome.error.kind is Failure.CANCELLED:
            work.settled(tid)
            run.stop(tid, outcome.error, call.attempt)
        elif call.attempt <= run.plan.tasks[tid].spec.options.retries and not run.cancelling:
            self._retry(work, tid, outcome.error)
        else:
            self._fail(work, tid, outcome.error)

    # -- outcomes -------------------------------------------------------------------

    def _succeed(self, work: Work, tid: str, outcome: TaskOutcome) -> None:
        run = work.run
        result = outcome.result or {}
        if work.consumers[tid]:
            work.handles[tid] = outcome.handles
        duration = (outcome.finished_at or 0.0) - (outcome.started_at or 0.0)
        work.settled(tid)
        run.finish(tid, result, at=outcome.finished_at, duration=duration)
        fp = run.fingerprints[tid]
        if self.store is not None and run.plan.tasks[tid].spec.options.cache and fp.inputs:
            try:
                self.store.put(fp.digest, dict(result))
            except Exception:  # noqa: BLE001 - an unpicklable result is simply not cached
                _log.warning("maze: the result of task %r could not be cached", tid, exc_info=True)
        work.sorter.done(tid)
        if not run.cancelling:
            self._queue_ready(work)
            if work.eager:
                self._upstream_settled(work, tid)

    def _fail(self, work: Work, tid: str, error: TaskError | None) -> None:
        run = work.run
        work.settled(tid)
        run.fail(tid, error or TaskError.simple("RuntimeError", "the task failed without an error"), work.attempts[tid])
        for child in run.plan.descendants(tid):
            if run.states[child] is TaskState.PENDING:
                self._skip(work, child, f"upstream task {tid!r} failed", tid, cancelled=False, stop=True)
        if run.fail_fast and not run.cancelling:
            run.cancel()
            self._stop_everything(work, f"fail_fast: task {tid!r} failed", upstream=tid)

    def _retry(self, work: Work, tid: str, error: TaskError | None) -> None:
        delay = work.run.plan.tasks[tid].spec.options.retry_delay
        timer = threading.Timer(delay, self._requeue, (work, tid))
        timer.daemon = True
        work.timers[tid] = timer
        work.run.retry(tid, error, work.attempts[tid], delay)
        timer.start()

    def _requeue(self, work: Work, tid: str) -> None:
        with self._lock, self._guard(work):
            if work.timers.pop(tid, None) is None or work.run.cancelling:
                return
            work.run.requeue(tid)
            need = work.run.plan.tasks[tid].spec.resources
            self._waiting.setdefault(need, deque()).append((work, tid))
            self._dispatch()

    def _stop_everything(self, work: Work, reason: str, upstream: str | None) -> None:
        run = work.run
        for tid, timer in list(work.timers.items()):
            timer.cancel()
            del work.timers[tid]
            work.settled(tid)
            run.skip(tid, reason, upstream, cancelled=True)
        for tid, state in list(run.states.items()):
            if state is not TaskState.PENDING:
                continue
            self._skip(work, tid, reason, upstream, cancelled=True, stop=False)   # stopped below
        for call in list(work.calls.values()):
            self.backend.stop(call.call_id)  # its future settles the task as cancelled
        if run.open == 0:
            self._end(work)

    def _skip(self, work: Work, tid: str, reason: str, upstream: str | None, *, cancelled: bool, stop: bool) -> None:
        """``tid`` will not run here: skip it, or, if it was submitted ahead, stop it and let what it
        reports back decide. Such a task may be running already (Ray starts it once its inputs exist,
        which can be before an upstream failure only the driver sees): started, it ends as a started
        task that was stopped, as on every backend; else it is skipped. Never skipped after it ran."""
        if tid not in work.ahead:
            work.run.skip(tid, reason, upstream, cancelled=cancelled)
            return
        work.stopping[tid] = (reason, upstream, cancelled)
        held = work.held_done.pop(tid, None)
        if held is not None:   # it has ended already
            self._conclude_stopped_ahead(work, tid, held[0])
        elif stop and tid in work.calls:
            self.backend.stop(work.calls[tid].call_id)

    def _conclude_stopped_ahead(self, work: Work, tid: str, call: TaskCall) -> None:
        """An ahead task stopped with its run has reported back (its start, if any, came before)."""
        reason, upstream, cancelled = work.stopping.pop(tid)
        events = work.held.pop(tid, [])
        work.ahead.discard(tid)
        work.settled(tid)
        if any(isinstance(e, TaskStarted) for e in events):
            work.run.launch(tid)
            for event in events:
                work.apply(tid, call, event)
            work.run.stop(tid, TaskError.cancelled(tid, reason), call.attempt)
        else:
            work.run.skip(tid, reason, upstream, cancelled=cancelled)

    def _guard(self, work: Work) -> _Guard:
        return _Guard(self, work)

    def _abort(self, work: Work, exc: BaseException) -> None:
        """The scheduler itself failed: end the run rather than leave it hanging."""
        run = work.run
        _log.error("maze scheduler error in run %s", run.run_id, exc_info=exc)
        with self._lock:
            try:
                for call in list(work.calls.values()):
                    self.backend.stop(call.call_id)
                error = TaskError.simple(type(exc).__name__, f"internal scheduler error: {exc}")
                for tid, state in list(run.states.items()):
                    if not state.terminal:
                        work.settled(tid)
                        run.stop(tid, error, work.attempts[tid])
            finally:
                self._end(work)


class _Guard:
    """``with engine._guard(work):`` ends the run if the block raises (a class: it is on the hot path)."""

    __slots__ = ("engine", "work")

    def __init__(self, engine: Engine, work: Work) -> None:
        self.engine = engine
        self.work = work

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        self.engine._abort(self.work, exc)
        return isinstance(exc, Exception)  # swallow errors; let KeyboardInterrupt and friends through


def _demand(need: Resources) -> str:
    return ", ".join(f"{k}={v}" for k, v in need.as_dict().items())
