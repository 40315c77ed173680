"""Task states as a reader of the message stream sees them.

The widget and the static picture never look inside a run; they fold its
messages, in order, into a :class:`Board`: each task's state, the text shown
on hover, and counts per state. Replaying the recorded messages of a finished
run gives exactly the picture a live viewer saw at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from maze.core.plan import Plan

_BY_TYPE = {
    "start_task": "running",
    "finish_task": "finished",
    "task_retry": "retrying",
}


@dataclass
class Board:
    plan: Plan
    states: dict[str, str] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    status: str = "pending"       # the run's: pending, running, completed, failed, cancelled
    duration: float | None = None
    changed: set[str] = field(default_factory=set)   # tasks touched since the last take_changed()

    def __post_init__(self) -> None:
        for tid in self.plan.tasks:
            self.states.setdefault(tid, "pending")

    def apply(self, messages: Iterable[dict[str, Any]]) -> None:
        for m in messages:
            kind, d = m["type"], m["data"]
            tid = d.get("task_id")
            if kind == "finish_workflow":
                self.status, self.duration = d["status"], d.get("duration")
                continue
            if tid not in self.states:
                continue
            self.status = "running"
            self.changed.add(tid)
            if kind == "finish_task" and d.get("cached"):
                self.states[tid] = "cached"
            elif kind in _BY_TYPE:
                self.states[tid] = _BY_TYPE[kind]
                if kind == "start_task":
                    self.started[tid] = d["time"]
                elif kind == "finish_task":
                    self.durations[tid] = d.get("duration", 0.0)
            elif kind == "task_exception":
                cancelled = d.get("error_type") == "TaskCancelled"
                self.states[tid] = "cancelled" if cancelled else "failed"
                self.errors[tid] = f"{d.get('error_type')}: {d.get('error')}"
                if tid in self.started:
                    self.durations[tid] = d["time"] - self.started[tid]
            elif kind == "task_skipped":
                self.states[tid] = "cancelled" if d.get("cancelled") else "skipped"
                self.errors[tid] = d.get("reason", "")

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def counts(self) -> Counter[str]:
        return Counter(self.states.values())

    def tooltip(self, tid: str) -> str:
        t = self.plan.tasks[tid]
        res = ", ".join(f"{k}={v}" for k, v in t.spec.resources.as_dict().items() if v)
        lines = [f"{tid}  ({self.states[tid]})"]
        if tid in self.durations:
            lines.append(f"duration: {self.durations[tid]:.3f} s")
        lines.append(f"resources: {res or 'none'}")
        if tid in self.errors:
            lines.append(self.errors[tid].splitlines()[0] if self.errors[tid] else "")
        return "\n".join(lines)

    def tooltips(self) -> dict[str, str]:
        return {tid: self.tooltip(tid) for tid in self.plan.tasks}
