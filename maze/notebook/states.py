"""Task states as a reader of the message stream sees them.

The widget and the static picture never look inside a run; a :class:`Board`
folds its messages, in order, with the core's one fold
(:class:`maze.core.fold.RunFold`), and adds what a picture needs: the text
shown on hover and counts per state. Replaying the recorded messages of a
finished run gives exactly the picture a live viewer saw at the end, and the
same states a replayed summary reports.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from maze.core.fold import RunFold, TaskView
from maze.core.messages import clip
from maze.core.plan import Plan

#: Lines of printed output a board keeps: per task (for its details), and for the run's log pane.
TASK_OUTPUT_LINES = 50
LOG_LINES = 200
LINE_CHARS = 300


class Board:
    """The states of one run's tasks, for drawing, with the bounded output a viewer shows."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._fold = RunFold(tuple(plan.tasks))
        self._names = {tid: state.value for tid, state in self._fold.states.items()}
        self.output: dict[str, deque[str]] = {}          # task id -> its last printed lines
        self.log: deque[str] = deque(maxlen=LOG_LINES)     # the run's last printed lines, marked with the task
        self.log_lines = 0                                 # how many lines were printed in all
        self.log_changed = False
        self._resources: dict[str, str] = {}

    def apply(self, messages: Iterable[dict[str, Any]]) -> None:
        fold_these = []
        for m in messages:
            if m["type"] == "task_log":
                self._printed(m["data"])
            else:
                fold_these.append(m)
        self._fold.apply(fold_these)
        # Keep the names of the states up to date for the tasks these messages touched
        # only: a run of 10,000 tasks must not rebuild a 10,000-entry map per update.
        states = self._fold.states
        touched = {m["data"].get("task_id") for m in fold_these}
        if any(m["type"] == "finish_workflow" for m in fold_these):
            touched = set(states)   # an interrupted run's end touches every unfinished task
        for tid in touched:
            if tid in states:
                self._names[tid] = states[tid].value

    def _printed(self, d: dict[str, Any]) -> None:
        tid = d.get("task_id", "")
        # As a terminal shows it: a carriage return (a progress bar) rewrites its line, and a
        # line is cut at a readable length, so the pane stays small whatever a task prints.
        lines = [clip(line.rsplit("\r", 1)[-1], LINE_CHARS) for line in d.get("text", "").rstrip("\n").split("\n")]
        self.output.setdefault(tid, deque(maxlen=TASK_OUTPUT_LINES)).extend(lines)
        self.log.extend(f"[{tid}] {line}" for line in lines)
        self.log_lines += len(lines)
        self.log_changed = True

    def failures(self, limit: int = 50) -> list[dict[str, str]]:
        """The first ``limit`` failed tasks, with the first line of their error."""
        out = []
        for tid in self._fold.in_state(TaskView.FAILED)[:limit]:
            why = self.why(tid) or ""
            out.append({"task": tid, "error": why.splitlines()[0] if why else ""})
        return out

    def failed_count(self) -> int:
        return len(self._fold.in_state(TaskView.FAILED))

    def detail(self, tid: str) -> dict[str, str]:
        """What a viewer shows when a task is picked: its state, its whole error and its output."""
        err = self._fold.errors.get(tid)
        state = self._fold.states[tid]
        if err is not None:
            why = err.traceback
        elif state is TaskView.INTERRUPTED:
            why = "the process that drove the run ended before this task did"
        elif state is TaskView.RETRYING:
            why = f"an attempt failed, another follows: {self._fold.retry_errors.get(tid, '')}"
        else:
            why = self._fold.skip_reasons.get(tid, "")
        return {
            "task": tid,
            "state": state.value,
            "error": why,
            "output": "\n".join(self.output.get(tid, ())),
        }

    @property
    def states(self) -> dict[str, str]:
        """Task id -> state name (pending, running, retrying, finished, cached, failed, ...): a copy."""
        return dict(self._names)

    @property
    def status(self) -> str:
        """The run's: pending, running, then completed, failed, cancelled or interrupted."""
        return self._fold.status

    @property
    def duration(self) -> float | None:
        return self._fold.duration

    def take_changed(self) -> set[str]:
        return self._fold.take_changed()

    def counts(self) -> Counter[str]:
        return self._fold.counts()

    def why(self, tid: str) -> str | None:
        """The error of a failed or cancelled task, or why it was skipped."""
        if tid in self._fold.errors:
            return self._fold.errors[tid].text
        return self._fold.skip_reasons.get(tid)

    def tooltip(self, tid: str) -> str:
        res = self._resources.get(tid)
        if res is None:   # the same for every update of a task: made once
            t = self.plan.tasks[tid]
            res = self._resources[tid] = ", ".join(f"{k}={v}" for k, v in t.spec.resources.as_dict().items() if v)
        lines = [f"{tid}  ({self._fold.states[tid].value})"]
        if tid in self._fold.durations:
            lines.append(f"duration: {self._fold.durations[tid]:.3f} s")
        lines.append(f"resources: {res or 'none'}")
        why = self.why(tid)
        if why is not None:
            lines.append(why.splitlines()[0] if why else "")
        return "\n".join(lines)

    def tooltips(self, tasks: Iterable[str] | None = None) -> dict[str, str]:
        return {tid: self.tooltip(tid) for tid in (self.plan.tasks if tasks is None else tasks)}
