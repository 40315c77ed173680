"""Task states as a reader of the message stream sees them.

The widget and the static picture never look inside a run; a :class:`Board`
folds its messages, in order, with the core's one fold
(:class:`maze.core.fold.RunFold`), and adds what a picture needs: the text
shown on hover and counts per state. Replaying the recorded messages of a
finished run gives exactly the picture a live viewer saw at the end, and the
same states a replayed summary reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from maze.core.fold import RunFold
from maze.core.plan import Plan


class Board:
    """The states of one run's tasks, for drawing."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._fold = RunFold(tuple(plan.tasks))

    def apply(self, messages: Iterable[dict[str, Any]]) -> None:
        self._fold.apply(messages)

    @property
    def states(self) -> dict[str, str]:
        """Task id -> state name (pending, running, retrying, finished, cached, failed, ...)."""
        return {tid: state.value for tid, state in self._fold.states.items()}

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
        t = self.plan.tasks[tid]
        res = ", ".join(f"{k}={v}" for k, v in t.spec.resources.as_dict().items() if v)
        lines = [f"{tid}  ({self._fold.states[tid].value})"]
        if tid in self._fold.durations:
            lines.append(f"duration: {self._fold.durations[tid]:.3f} s")
        lines.append(f"resources: {res or 'none'}")
        why = self.why(tid)
        if why is not None:
            lines.append(why.splitlines()[0] if why else "")
        return "\n".join(lines)

    def tooltips(self) -> dict[str, str]:
        return {tid: self.tooltip(tid) for tid in self.plan.tasks}
