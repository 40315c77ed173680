"""Reading a run from its messages: the one fold.

A run's messages say everything about it, so every reader that knows a run
only by its messages (a replay from the history, the notebook widget, a
picture drawn afterwards) folds them with :class:`RunFold`, and no other code
interprets the stream. The fold is incremental (:meth:`RunFold.apply` takes
messages as they come) and pure: the same messages always give the same
states, whoever reads them and whenever.

The scheduler does not fold: it *makes* the messages and keeps its own
bookkeeping. Tests check that, for runs with failures, retries, skips,
cancellation and cached tasks, the live summary equals the summary of the
folded messages.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from .errors import TaskCancelled
from .messages import (
    FinishTaskData,
    FinishWorkflowData,
    Message,
    MessageType,
    StartTaskData,
    TaskData,
    TaskExceptionData,
    TaskRetryData,
    TaskSkippedData,
)
from .protocol import Failure, TaskError

#: The ``error_type`` of an attempt stopped because its run was cancelled (the one place that names it).
CANCELLED_ERROR = TaskCancelled.__name__


class TaskView(str, enum.Enum):
    """A task's state as the message stream shows it (what the widget colours)."""

    PENDING = "pending"           # no message yet: waiting for upstream tasks or resources
    RUNNING = "running"           # started on a worker
    RETRYING = "retrying"         # an attempt failed; another will follow
    FINISHED = "finished"
    CACHED = "cached"             # finished without running: reused from an earlier run or the cache
    FAILED = "failed"
    SKIPPED = "skipped"           # a task it depends on failed
    CANCELLED = "cancelled"       # the run was cancelled before or while it ran
    INTERRUPTED = "interrupted"   # the process driving the run died before the task ended

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {TaskView.FINISHED, TaskView.CACHED, TaskView.FAILED, TaskView.SKIPPED,
             TaskView.CANCELLED, TaskView.INTERRUPTED}


@dataclass
class RunFold:
    """The states of a run's tasks, folded from its messages."""

    task_ids: tuple[str, ...]
    states: dict[str, TaskView] = field(default_factory=dict)
    results: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    errors: dict[str, TaskError] = field(default_factory=dict)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    retry_errors: dict[str, str] = field(default_factory=dict)     # the error of the last failed attempt
    started: dict[str, float] = field(default_factory=dict)       # when the current attempt started
    durations: dict[str, float] = field(default_factory=dict)
    fingerprints: dict[str, Mapping[str, str]] = field(default_factory=dict)
    status: str = "pending"       # the run's: pending, running, then finish_workflow's status
    duration: float | None = None
    ended: bool = False           # finish_workflow was seen
    changed: set[str] = field(default_factory=set)   # tasks touched since the last take_changed()

    def __post_init__(self) -> None:
        for tid in self.task_ids:
            self.states.setdefault(tid, TaskView.PENDING)

    def apply(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self._apply(m["type"], m["data"])

    def _apply(self, kind: str, data: Mapping[str, Any]) -> None:
        # Each branch reads the data as its message type's TypedDict (core/messages.py),
        # so the field names are checked against the one vocabulary. Messages recorded
        # by older versions may lack optional fields: .get() where a field can be absent.
        if kind == MessageType.FINISH_WORKFLOW:
            end = cast(FinishWorkflowData, data)
            self.status, self.duration, self.ended = end["status"], end.get("duration"), True
            if end["status"] == "interrupted":
                for task_id, state in self.states.items():
                    if not state.terminal:
                        self.states[task_id] = TaskView.INTERRUPTED
                        self.changed.add(task_id)
            return
        tid = cast(TaskData, data).get("task_id")
        if tid not in self.states:
            return
        self.status = "running"
        self.changed.add(tid)
        if kind == MessageType.START_TASK:
            start = cast(StartTaskData, data)
            self.states[tid] = TaskView.RUNNING
            self.started[tid] = start["time"]
        elif kind == MessageType.FINISH_TASK:
            done = cast(FinishTaskData, data)
            self.states[tid] = TaskView.CACHED if done.get("cached") else TaskView.FINISHED
            self.results[tid] = done["result"]
            self.durations[tid] = done.get("duration", 0.0)
            if "fingerprint" in done:
                self.fingerprints[tid] = done["fingerprint"]
        elif kind == MessageType.TASK_RETRY:
            self.states[tid] = TaskView.RETRYING
            self.retry_errors[tid] = cast(TaskRetryData, data).get("error", "")
        elif kind == MessageType.TASK_EXCEPTION:
            failed = cast(TaskExceptionData, data)
            cancelled = failed.get("error_type") == CANCELLED_ERROR
            self.states[tid] = TaskView.CANCELLED if cancelled else TaskView.FAILED
            self.errors[tid] = TaskError(failed.get("error_type", ""), failed.get("error", ""), failed.get("result", ""),
                                         Failure.CANCELLED if cancelled else Failure.RAISED)
            if tid in self.started:
                self.durations[tid] = failed["time"] - self.started[tid]
        elif kind == MessageType.TASK_SKIPPED:
            skipped = cast(TaskSkippedData, data)
            self.states[tid] = TaskView.CANCELLED if skipped.get("cancelled") else TaskView.SKIPPED
            self.skip_reasons[tid] = skipped.get("reason", "")

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def counts(self) -> Counter[str]:
        return Counter(state.value for state in self.states.values())

    def in_state(self, state: TaskView) -> list[str]:
        return [tid for tid, s in self.states.items() if s is state]
