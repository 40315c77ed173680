"""The state of one run, in one object.

:class:`RunState` is the single owner of everything a run knows: each task's
state, the results and output handles of finished tasks, and the ordered
message list. The scheduler is the only writer, always under the engine lock;
users, ``show_results`` and the notebook widget only *read* it, through the
message stream and the query methods below.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from graphlib import TopologicalSorter
from typing import Any

from . import messages
from .admission import Grant
from .errors import UnknownTaskError
from .fingerprint import Fingerprint
from .fold import RunFold, TaskView
from .messages import Message, MessageLog, MessageType
from .plan import Plan
from .protocol import Recorder, TaskCall, TaskError, TaskLog, TaskStarted
from .snapshot import Snapshot


class TaskState(str, enum.Enum):
    PENDING = "pending"         # waiting for upstream tasks or for resources
    RUNNING = "running"         # admitted and handed to the backend
    RETRYING = "retrying"       # an attempt failed; the next one waits for its delay
    FINISHED = "finished"
    FAILED = "failed"
    SKIPPED = "skipped"         # an upstream task failed
    CANCELLED = "cancelled"     # the run was cancelled before or while it ran
    INTERRUPTED = "interrupted" # the process driving the run died first (known from the history)

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {TaskState.FINISHED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED, TaskState.INTERRUPTED}

#: ``get_task_result``'s ``status`` for each terminal state (the original SDK's words).
RESULT_STATUS = {
    TaskState.FINISHED: "success",
    TaskState.FAILED: "exception",
    TaskState.SKIPPED: "skipped",
    TaskState.CANCELLED: "cancelled",
    TaskState.INTERRUPTED: "interrupted",
}

# How a replay maps what the messages show onto the scheduler's states.
_FROM_VIEW = {
    TaskView.PENDING: TaskState.PENDING,
    TaskView.RUNNING: TaskState.RUNNING,
    TaskView.RETRYING: TaskState.RETRYING,
    TaskView.FINISHED: TaskState.FINISHED,
    TaskView.CACHED: TaskState.FINISHED,
    TaskView.FAILED: TaskState.FAILED,
    TaskView.SKIPPED: TaskState.SKIPPED,
    TaskView.CANCELLED: TaskState.CANCELLED,
    TaskView.INTERRUPTED: TaskState.INTERRUPTED,
}


# Waiting for a run (``wait``) only needs waking for output to echo and for the end.
_ATTENTION = {MessageType.TASK_LOG.value, MessageType.FINISH_WORKFLOW.value}


class RunStatus(str, enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its driving process died before it ended (known from the history)


class RunState:
    """Everything about one run. Written by the scheduler only, under ``lock``."""

    def __init__(
        self, run_id: str, plan: Plan, lock: threading.RLock, *, fail_fast: bool,
        recorder: Recorder | None = None,
    ) -> None:
        self.run_id = run_id
        self.plan = plan
        self.fail_fast = fail_fast
        self.status = RunStatus.RUNNING
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self.duration: float | None = None          # set when the run ends

        self.states: dict[str, TaskState] = dict.fromkeys(plan.tasks, TaskState.PENDING)
        self.open = len(plan.tasks)                 # tasks not yet in a terminal state
        self.results: dict[str, Mapping[str, Any]] = {}
        self.errors: dict[str, TaskError] = {}
        self.skip_reasons: dict[str, str] = {}
        self.started: set[str] = set()              # tasks whose start_task was recorded
        self.attempts: dict[str, int] = dict.fromkeys(plan.tasks, 0)

        # Scheduling bookkeeping, kept here so that a run's state has one home.
        self.sorter: TopologicalSorter[str] = TopologicalSorter(
            {tid: t.upstream for tid, t in plan.tasks.items()}
        )
        self.sorter.prepare()                       # the plan was checked for cycles already
        self.handles: dict[str, Mapping[str, Any]] = {}   # outputs of finished tasks, for dependents
        self.consumers: dict[str, int] = {tid: 0 for tid in plan.tasks}
        for t in plan.tasks.values():
            for up in {ref.task_id for ref in t.refs.values()}:
                self.consumers[up] += 1
        self.snapshot = Snapshot({}, {}, {})          # code and constants as they were at run() (set by the scheduler)
        self.fingerprints: dict[str, Fingerprint] = {}   # set by the scheduler at start
        self.reusable: dict[str, tuple[Mapping[str, Any], str]] = {}  # task -> (result, where it came from)
        self.reasons: dict[str, str] = {}           # why each task ran, or was reused (resume, cache)
        self.reused: set[str] = set()               # tasks whose result came from an earlier run or the cache
        self.calls: dict[str, TaskCall] = {}        # the current attempt of each admitted task
        self.grants: dict[str, Grant] = {}          # resources held by admitted tasks
        self.timers: dict[str, threading.Timer] = {}  # retries waiting for their delay
        self.cancelling = False

        self.recorder = recorder                    # durable history, when the client keeps one
        self._run_data: messages.RunData = {"workflow_id": plan.workflow_id, "run_id": run_id}
        self.messages: list[Message] = []
        self.changed = threading.Condition(lock)    # notified on every message
        self.attention = threading.Condition(lock)  # notified on task output and at the end only
        self.ended = threading.Event()
        self.prepared = threading.Event()           # fingerprints and reuse decided (see Engine.start)
        self._replay: RunFold | None = None          # the fold of a replayed run's messages
        # What Ctrl-C while a reader waits on this run does (the engine sets it: cancel the run).
        self.on_interrupt: Callable[[], None] | None = None

    # -- transitions (the scheduler's only way to change a task) -------------------------
    # Each records the task's message and changes its state together, so the
    # message stream and the states never disagree.

    def launch(self, tid: str, call: TaskCall, grant: Grant) -> None:
        """The task's attempt was admitted and handed to the backend."""
        self.calls[tid] = call
        self.grants[tid] = grant
        self.states[tid] = TaskState.RUNNING

    def start(self, tid: str, event: TaskStarted, attempt: int) -> None:
        """The attempt started on a worker."""
        self.started.add(tid)
        self._record(messages.start_task(self._run_data, tid, self._name(tid), at=event.at, node=event.node,
                                         worker=event.worker, gpu_ids=list(event.gpu_ids), attempt=attempt,
                                         node_id=event.node_id))

    def output(self, tid: str, event: TaskLog) -> None:
        """The task printed something."""
        self._record(messages.task_log(self._run_data, tid, self._name(tid), at=event.at, stream=event.stream,
                                       text=event.text))

    def finish(self, tid: str, result: Mapping[str, Any], *, at: float | None, duration: float,
               reused_from: str | None = None) -> None:
        """The task returned ``result`` (or an earlier result was reused: ``reused_from`` says where)."""
        self.results[tid] = result
        if reused_from:
            self.reused.add(tid)
        self._record(messages.finish_task(self._run_data, tid, self._name(tid), at=at, result=result,
                                          duration=duration, fingerprint=self.fingerprints[tid].as_dict(),
                                          reused_from=reused_from))
        self._settle(tid, TaskState.FINISHED)

    def fail(self, tid: str, error: TaskError) -> None:
        """The task's last attempt failed."""
        self.errors[tid] = error
        self._exception_msg(tid, error)
        self._settle(tid, TaskState.FAILED)

    def stop(self, tid: str, error: TaskError) -> None:
        """The task's running attempt was stopped: its run was cancelled (or the scheduler failed)."""
        self.errors[tid] = error
        self._exception_msg(tid, error)
        self._settle(tid, TaskState.CANCELLED)

    def retry(self, tid: str, error: TaskError | None, delay: float, timer: threading.Timer) -> None:
        """An attempt failed; the next one starts when ``timer`` fires."""
        self._record(messages.task_retry(self._run_data, tid, self._name(tid), attempt=self.attempts[tid],
                                         error=error.text if error else "", delay=delay))
        self.states[tid] = TaskState.RETRYING
        self.timers[tid] = timer

    def requeue(self, tid: str) -> None:
        """A retry's delay is over: the task waits for resources again."""
        self.states[tid] = TaskState.PENDING

    def skip(self, tid: str, reason: str, upstream: str | None, *, cancelled: bool) -> None:
        """The task will not run: a task it depends on failed, or the run was cancelled."""
        self.skip_reasons[tid] = reason
        self._record(messages.task_skipped(self._run_data, tid, self._name(tid), reason=reason, upstream=upstream,
                                           cancelled=cancelled))
        self._settle(tid, TaskState.CANCELLED if cancelled else TaskState.SKIPPED)

    def _exception_msg(self, tid: str, error: TaskError) -> None:
        # Bounded copies: a 5 MB error message would otherwise travel whole into every
        # reader and the history; get_task_result keeps the full text (self.errors).
        self._record(messages.task_exception(self._run_data, tid, self._name(tid), traceback=error.traceback,
                                             error_type=error.error_type, error=error.error,
                                             attempt=self.attempts[tid]))

    def _record(self, message: Message) -> None:
        self.messages.append(message)
        if self.recorder is not None:
            self.recorder.message(self.run_id, len(self.messages), message)
        self.changed.notify_all()
        if message["type"] in _ATTENTION:
            self.attention.notify_all()

    def _name(self, task_id: str) -> str:
        return self.plan.tasks[task_id].name

    def _settle(self, task_id: str, state: TaskState) -> None:
        """Move a task to a terminal state."""
        assert state.terminal and not self.states[task_id].terminal, (task_id, state)
        self.states[task_id] = state
        self.open -= 1
        self.calls.pop(task_id, None)

    def end(self) -> None:
        """Record ``finish_workflow``: the last message, whatever happened."""
        if self.ended.is_set():
            return
        self.duration = time.perf_counter() - self._t0
        failed = any(s is TaskState.FAILED for s in self.states.values())
        if self.cancelling and not (self.fail_fast and failed):
            self.status = RunStatus.CANCELLED
        elif failed or any(s is not TaskState.FINISHED for s in self.states.values()):
            self.status = RunStatus.FAILED
        else:
            self.status = RunStatus.COMPLETED
        self._record(messages.finish_workflow(self._run_data, status=self.status.value, has_exception=failed,
                                              duration=self.duration))
        self.ended.set()  # after the message: readers that saw it set must find it

    @classmethod
    def replayed(cls, run_id: str, plan: Plan, messages: list[Message], *, complete: bool = True) -> RunState:
        """A run rebuilt from its recorded messages (read-only), by the one fold of :mod:`.fold`.

        ``complete=True``: what was recorded is all there will be, and the replay
        has ended even without ``finish_workflow``. ``complete=False``: the run is
        still going elsewhere; :meth:`recorded` adds its later messages, and it
        ends with its ``finish_workflow``.
        """
        run = cls(run_id, plan, threading.RLock(), fail_fast=False)
        run._replay = RunFold(tuple(plan.tasks))
        run.prepared.set()
        run.recorded(messages)
        if complete:
            run.ended.set()
        return run

    def recorded(self, messages: list[Message]) -> None:
        """More recorded messages of a replayed run, folded in (a run followed from the history)."""
        fold = self._replay
        assert fold is not None, "only a replayed run takes recorded messages"
        with self.changed:
            self.messages.extend(messages)
            fold.apply(messages)
            self.states = {tid: _FROM_VIEW[view] for tid, view in fold.states.items()}
            self.reused = set(fold.in_state(TaskView.CACHED))
            self.results = dict(fold.results)
            self.errors = dict(fold.errors)
            self.skip_reasons = dict(fold.skip_reasons)
            self.started = set(fold.started)
            self.fingerprints = {tid: Fingerprint.from_dict(fp) for tid, fp in fold.fingerprints.items()}
            if fold.ended:
                self.status = RunStatus(fold.status)
                self.duration = fold.duration
            self.open = sum(not s.terminal for s in self.states.values())
            self.changed.notify_all()
            self.attention.notify_all()
            if fold.ended:
                self.ended.set()

    # -- reading ------------------------------------------------------------------

    def log(self) -> MessageLog:
        return MessageLog(self.messages, self.changed, self.ended, on_interrupt=self.interrupted)

    def interrupted(self) -> None:
        """A reader waiting on this run got Ctrl-C: cancel the run and let it end (bounded wait)."""
        if self.on_interrupt is not None and not self.ended.is_set():
            self.on_interrupt()
            self.ended.wait(30)

    def resolve_task(self, task_id: str) -> str:
        """A task id, or a unique prefix of one."""
        if task_id in self.plan.tasks:
            return task_id
        matches = [tid for tid in self.plan.tasks if tid.startswith(task_id)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(self.plan.tasks)
        if not matches:
            raise UnknownTaskError(f"run {self.run_id!r} has no task {task_id!r}; its tasks are: {known}")
        raise UnknownTaskError(
            f"task id prefix {task_id!r} is ambiguous in run {self.run_id!r}: it matches {', '.join(matches)}"
        )

    def follow_logs(self) -> Iterator[Message]:
        """Yield each ``task_log`` message as it arrives, until the run ends."""
        seen = 0
        while True:
            try:
                with self.attention:
                    self.attention.wait_for(partial(self._has_news, seen))
                    batch = self.messages[seen:]
                    seen = len(self.messages)
                    done = self.ended.is_set()
            except KeyboardInterrupt:
                self.interrupted()
                raise
            yield from (m for m in batch if m["type"] == MessageType.TASK_LOG.value)
            if done:
                return

    def _has_news(self, seen: int) -> bool:
        return self.ended.is_set() or len(self.messages) > seen

    def wait_task(self, task_id: str, timeout: float | None = None) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.states[task_id].terminal, timeout)

    def task_result(self, task_id: str) -> dict[str, Any]:
        state = self.states[task_id]
        out: dict[str, Any] = {
            "task_id": task_id,
            "result": self.results.get(task_id),
            "status": RESULT_STATUS.get(state, state.value),
        }
        if task_id in self.errors:
            out["error"] = self.errors[task_id].text  # in full; messages carry a bounded copy
        elif task_id in self.skip_reasons:
            out["error"] = self.skip_reasons[task_id]
        return out

    def summary(self) -> dict[str, Any]:
        by_state = {s: [t for t, st in self.states.items() if st is s] for s in TaskState}
        return {
            "run_id": self.run_id,
            "workflow_completed": self.status is RunStatus.COMPLETED,
            "status": self.status.value,
            "has_exception": bool(by_state[TaskState.FAILED]),
            "exception_tasks": by_state[TaskState.FAILED],
            "skipped_tasks": by_state[TaskState.SKIPPED],
            "cancelled_tasks": by_state[TaskState.CANCELLED],
            "interrupted_tasks": by_state[TaskState.INTERRUPTED],
            "cached_tasks": [t for t in self.plan.tasks if t in self.reused],
            "task_results": {t: self.results[t] for t in self.plan.tasks if t in self.results},
            "duration": self.duration,
        }
