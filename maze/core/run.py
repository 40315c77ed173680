"""The state of one run, in one object.

:class:`RunState` is the single owner of everything a run knows: each task's
state, the results of finished tasks, why each task ran or was reused, and
the ordered message list. It changes only through its transitions
(:meth:`~RunState.launch`, :meth:`~RunState.start`, :meth:`~RunState.finish`,
:meth:`~RunState.fail`, :meth:`~RunState.retry`, :meth:`~RunState.skip`, ...),
each of which records the task's message and moves its state together; the
scheduler calls them under the engine lock, and keeps its own working data
(the topological sorter, output handles, resource grants) apart, in
:mod:`maze.core.scheduler`. Everyone else reads, through the read-only view
:class:`~maze.core.protocol.RunView`: the message stream, the task states and
the query methods.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from functools import partial
from types import MappingProxyType
from typing import Any, overload

from . import messages, waiting
from .errors import UnknownTaskError
from .fingerprint import Fingerprint
from .fold import RunFold, TaskView
from .messages import Message, MessageLog, MessageType
from .plan import Plan
from .protocol import Recorder, TaskError, TaskLog, TaskStarted


class TaskState(str, enum.Enum):
    PENDING = "pending"         # waiting for upstream tasks or for resources
    SUBMITTED = "submitted"     # admitted and handed to the backend (its start_task may not have come yet)
    RETRYING = "retrying"       # an attempt failed; the next one waits for its delay
    FINISHED = "finished"
    FAILED = "failed"
    SKIPPED = "skipped"         # an upstream task failed
    CANCELLED = "cancelled"     # the run was cancelled before or while it ran
    INTERRUPTED = "interrupted" # the process driving the run died first (known from the history)

    terminal: bool   # set below for each state: a plain attribute, read several times per task

    def __init__(self, value: str) -> None:
        self.terminal = value in {"finished", "failed", "skipped", "cancelled", "interrupted"}

#: ``get_task_result``'s ``status`` for each terminal state (the original SDK's words).
RESULT_STATUS = {
    TaskState.FINISHED: "success",
    TaskState.FAILED: "exception",
    TaskState.SKIPPED: "skipped",
    TaskState.CANCELLED: "cancelled",
    TaskState.INTERRUPTED: "interrupted",
    TaskState.SUBMITTED: "running",   # as the user sees it: no longer waiting
}

# How a replay maps what the messages show onto the scheduler's states.
_FROM_VIEW = {
    TaskView.PENDING: TaskState.PENDING,
    TaskView.RUNNING: TaskState.SUBMITTED,
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
    """Everything about one run. Changed by its transitions only, under ``lock``."""

    def __init__(
        self, run_id: str, plan: Plan, lock: threading.RLock, *, fail_fast: bool,
        recorder: Recorder | None = None, on_interrupt: Callable[[], None] | None = None,
    ) -> None:
        self._run_id = run_id
        self._plan = plan
        self._fail_fast = fail_fast
        self._status = RunStatus.RUNNING
        self._started_at = time.time()
        self._t0 = time.perf_counter()
        self._duration: float | None = None
        self._cancelling = False

        self._states: dict[str, TaskState] = dict.fromkeys(plan.tasks, TaskState.PENDING)
        self._states_view = MappingProxyType(self._states)   # made once: the scheduler reads it often
        self._open = len(plan.tasks)                 # tasks not yet in a terminal state
        self._results: dict[str, Mapping[str, Any]] = {}
        self._errors: dict[str, TaskError] = {}
        self._skip_reasons: dict[str, str] = {}
        self._started: set[str] = set()              # tasks whose start_task was recorded
        self._reused: set[str] = set()               # tasks whose result came from an earlier run or the cache
        self._fingerprints: dict[str, Fingerprint] = {}
        self._reasons: dict[str, str] = {}           # why each task ran, or was reused (resume, cache)

        self._recorder = recorder                    # durable history, when the client keeps one
        self._run_data: messages.RunData = {"workflow_id": plan.workflow_id, "run_id": run_id}
        self._messages: list[Message] = []
        self.changed = threading.Condition(lock)    # notified on every message
        self.attention = threading.Condition(lock)  # notified on task output and at the end only
        self.ended = threading.Event()
        self.prepared = threading.Event()           # fingerprints and reuse decided (see Engine.start)
        self._replay: RunFold | None = None          # the fold of a replayed run's messages
        # What Ctrl-C while a reader waits on this run does (the engine's: cancel the run).
        self._on_interrupt = on_interrupt
        self._interrupted = False   # a reader's Ctrl-C has cancelled it already

    # -- the read-only view (see protocol.RunView) ---------------------------------------

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def fail_fast(self) -> bool:
        return self._fail_fast

    @property
    def status(self) -> RunStatus:
        return self._status

    @property
    def started_at(self) -> float:
        """When the run started (``time.time()``)."""
        return self._started_at

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None until the run ends."""
        return self._duration

    @property
    def cancelling(self) -> bool:
        """The run was cancelled (or failed fast): nothing new starts."""
        return self._cancelling

    @property
    def open(self) -> int:
        """How many tasks are not in a terminal state yet."""
        return self._open

    @property
    def states(self) -> Mapping[str, TaskState]:
        return self._states_view

    @property
    def results(self) -> Mapping[str, Mapping[str, Any]]:
        return MappingProxyType(self._results)

    @property
    def errors(self) -> Mapping[str, TaskError]:
        return MappingProxyType(self._errors)

    @property
    def fingerprints(self) -> Mapping[str, Fingerprint]:
        return MappingProxyType(self._fingerprints)

    @property
    def reasons(self) -> Mapping[str, str]:
        """Why each task ran, or was reused (what ``explain`` shows)."""
        return MappingProxyType(self._reasons)

    @property
    def reused(self) -> Set[str]:
        return frozenset(self._reused)

    def is_reused(self, task_id: str) -> bool:
        return task_id in self._reused

    @property
    def messages(self) -> Sequence[Message]:
        """The run's messages so far, in order (read them under ``changed``; do not change them)."""
        return _ReadOnly(self._messages)

    # -- transitions (the only way to change a run) ----------------------------------------
    # Each records the task's message and changes its state together, so the
    # message stream and the states never disagree.

    def prepare(self, fingerprints: Mapping[str, Fingerprint]) -> None:
        """The run's tasks were fingerprinted (code and inputs as they were at ``run()``)."""
        self._fingerprints = dict(fingerprints)

    def explain(self, task_id: str, reason: str, *, replace: bool = True) -> None:
        """Say why ``task_id`` runs or is reused (``replace=False``: unless already said)."""
        if replace:
            self._reasons[task_id] = reason
        else:
            self._reasons.setdefault(task_id, reason)

    def cancel(self) -> None:
        """The run is being cancelled: nothing new starts, and it ends as cancelled."""
        self._cancelling = True

    def launch(self, tid: str) -> None:
        """The task's attempt was admitted and handed to the backend."""
        self._states[tid] = TaskState.SUBMITTED

    def start(self, tid: str, event: TaskStarted, attempt: int) -> None:
        """The attempt started on a worker."""
        self._started.add(tid)
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
        self._results[tid] = result
        if reused_from:
            self._reused.add(tid)
        self._record(messages.finish_task(self._run_data, tid, self._name(tid), at=at, result=result,
                                          duration=duration, fingerprint=self._fingerprints[tid].as_dict(),
                                          reused_from=reused_from))
        self._settle(tid, TaskState.FINISHED)

    def fail(self, tid: str, error: TaskError, attempt: int) -> None:
        """The task's last attempt (number ``attempt``) failed."""
        self._errors[tid] = error
        self._exception_msg(tid, error, attempt)
        self._settle(tid, TaskState.FAILED)

    def stop(self, tid: str, error: TaskError, attempt: int) -> None:
        """The task's running attempt was stopped: its run was cancelled (or the scheduler failed)."""
        self._errors[tid] = error
        self._exception_msg(tid, error, attempt)
        self._settle(tid, TaskState.CANCELLED)

    def retry(self, tid: str, error: TaskError | None, attempt: int, delay: float) -> None:
        """Attempt ``attempt`` failed; the next one waits ``delay`` seconds."""
        self._record(messages.task_retry(self._run_data, tid, self._name(tid), attempt=attempt,
                                         error=error.text if error else "", delay=delay))
        self._states[tid] = TaskState.RETRYING

    def requeue(self, tid: str) -> None:
        """A retry's delay is over: the task waits for resources again."""
        self._states[tid] = TaskState.PENDING

    def skip(self, tid: str, reason: str, upstream: str | None, *, cancelled: bool) -> None:
        """The task will not run: a task it depends on failed, or the run was cancelled."""
        self._skip_reasons[tid] = reason
        self._record(messages.task_skipped(self._run_data, tid, self._name(tid), reason=reason, upstream=upstream,
                                           cancelled=cancelled))
        self._settle(tid, TaskState.CANCELLED if cancelled else TaskState.SKIPPED)

    def _exception_msg(self, tid: str, error: TaskError, attempt: int) -> None:
        # Bounded copies: a 5 MB error message would otherwise travel whole into every
        # reader and the history; get_task_result keeps the full text (self.errors).
        self._record(messages.task_exception(self._run_data, tid, self._name(tid), traceback=error.traceback,
                                             error_type=error.error_type, error=error.error,
                                             attempt=attempt))

    def _record(self, message: Message) -> None:
        self._messages.append(message)
        if self._recorder is not None:
            self._recorder.message(self._run_id, len(self._messages), message)
        self.changed.notify_all()
        if message["type"] in _ATTENTION:
            self.attention.notify_all()

    def _name(self, task_id: str) -> str:
        return self._plan.tasks[task_id].name

    def _settle(self, task_id: str, state: TaskState) -> None:
        """Move a task to a terminal state."""
        assert state.terminal and not self._states[task_id].terminal, (task_id, state)
        self._states[task_id] = state
        self._open -= 1

    def end(self) -> None:
        """Record ``finish_workflow``: the last message, whatever happened."""
        if self.ended.is_set():
            return
        self._duration = time.perf_counter() - self._t0
        failed = any(s is TaskState.FAILED for s in self._states.values())
        if self._cancelling and not (self._fail_fast and failed):
            self._status = RunStatus.CANCELLED
        elif failed or any(s is not TaskState.FINISHED for s in self._states.values()):
            self._status = RunStatus.FAILED
        else:
            self._status = RunStatus.COMPLETED
        self._record(messages.finish_workflow(self._run_data, status=self._status.value, has_exception=failed,
                                              duration=self._duration))
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
            self._messages.extend(messages)
            fold.apply(messages)
            self._states = {tid: _FROM_VIEW[view] for tid, view in fold.states.items()}
            self._states_view = MappingProxyType(self._states)
            self._reused = set(fold.in_state(TaskView.CACHED))
            self._results = dict(fold.results)
            self._errors = dict(fold.errors)
            self._skip_reasons = dict(fold.skip_reasons)
            self._started = set(fold.started)
            self._fingerprints = {tid: Fingerprint.from_dict(fp) for tid, fp in fold.fingerprints.items()}
            if fold.ended:
                self._status = RunStatus(fold.status)
                self._duration = fold.duration
            self._open = sum(not s.terminal for s in self._states.values())
            self.changed.notify_all()
            self.attention.notify_all()
            if fold.ended:
                self.ended.set()

    def unfollowed(self) -> None:
        """A run followed from the history can no longer be read: it ends here, as far as it was seen."""
        with self.changed:
            self.ended.set()
            self.changed.notify_all()     # wake every reader waiting for more
            self.attention.notify_all()

    # -- reading ------------------------------------------------------------------

    def log(self) -> MessageLog:
        return MessageLog(self._messages, self.changed, self.ended, reading=self.reading)

    def interrupted(self) -> None:
        """A reader waiting on this run got Ctrl-C: cancel the run and let it end (bounded wait).

        Once only: readers nest (``wait()`` reads ``follow_logs()``), and a second
        Ctrl-C, during this wait or after it, means "let me out now".
        """
        if self._on_interrupt is not None and not self.ended.is_set() and not self._interrupted:
            self._interrupted = True
            self._on_interrupt()
            waiting.wait(self.ended.wait, 30)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A reader follows this run: Ctrl-C anywhere in the block cancels the run (see :meth:`interrupted`).

        The whole block, not only its waits: Ctrl-C lands wherever the reader's
        thread is, and under load that is as often in the reader's own printing
        or copying as in a wait.
        """
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted()
            raise

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
        with self.reading():   # spans the yields: Ctrl-C raised as this generator resumes is heard too
            while True:
                with self.attention:
                    waiting.wait_for(self.attention.wait, partial(self._has_news, seen))
                    batch = self._messages[seen:]
                    seen = len(self._messages)
                    done = self.ended.is_set()
                yield from (m for m in batch if m["type"] == MessageType.TASK_LOG.value)
                if done:
                    return

    def _has_news(self, seen: int) -> bool:
        return self.ended.is_set() or len(self._messages) > seen

    def wait_task(self, task_id: str, timeout: float | None = None) -> bool:
        with self.changed:
            return waiting.wait_for(self.changed.wait, lambda: self._states[task_id].terminal, timeout)

    def task_result(self, task_id: str) -> dict[str, Any]:
        state = self._states[task_id]
        out: dict[str, Any] = {
            "task_id": task_id,
            "result": _copy(self._results.get(task_id)),
            "status": RESULT_STATUS.get(state, state.value),
        }
        if task_id in self._errors:
            out["error"] = self._errors[task_id].text  # in full; messages carry a bounded copy
        elif task_id in self._skip_reasons:
            out["error"] = self._skip_reasons[task_id]
        return out

    def summary(self) -> dict[str, Any]:
        by_state = {s: [t for t, st in self._states.items() if st is s] for s in TaskState}
        return {
            "run_id": self._run_id,
            "workflow_completed": self._status is RunStatus.COMPLETED,
            "status": self._status.value,
            "has_exception": bool(by_state[TaskState.FAILED]),
            "exception_tasks": by_state[TaskState.FAILED],
            "skipped_tasks": by_state[TaskState.SKIPPED],
            "cancelled_tasks": by_state[TaskState.CANCELLED],
            "interrupted_tasks": by_state[TaskState.INTERRUPTED],
            "cached_tasks": [t for t in self._plan.tasks if t in self._reused],
            "task_results": {t: dict(self._results[t]) for t in self._plan.tasks if t in self._results},
            "duration": self._duration,
        }


def _copy(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A result dict the caller may change without changing the run's (the values are the task's own)."""
    return dict(result) if result is not None else None


class _ReadOnly(Sequence[Message]):
    """The run's message list, readable only: indexing and slicing (a slice is a new list), ``len``."""

    __slots__ = ("_items",)

    def __init__(self, items: list[Message]) -> None:
        self._items = items

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)
