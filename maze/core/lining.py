"""Lining quick calls up behind each other, where the backend can and admission is the scheduler's.

On a backend that can line a call up behind another
(:class:`~maze.core.protocol.LiningBackend`, the local one), quick calls (under
``QUICK_S`` lately) share one grant, one after the other, up to ``LINE_DEPTH``
calls in all:

- when no resources are free, the next waiting tasks of the same shape go
  behind a running quick call (:meth:`Lining.behind`);
- a quick task's one dependent that waits for it alone goes behind it at once,
  taking its outputs as they come (:meth:`Lining.dependent`), so that in a
  chain the worker runs the next link the moment the one before ends. Until
  its upstream task finishes in the scheduler, such a dependent is *ahead*:
  pending in its run, what it reports held (see :mod:`maze.core.scheduler`).

The backend starts a lined-up call the moment the one before it ends, on the
same worker, while the scheduler is still concluding that one: on tasks much
shorter than the scheduler's own work per task, workers would otherwise wait
for it. This module decides which calls go where; the
:class:`~maze.core.scheduler.Engine` submits them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .protocol import LiningBackend, TaskCall, TaskError, TaskOutcome
from .run import TaskState
from .work import Slot, Work

# A task is lined up behind another only when both have lately run this briefly: a
# lined-up task reads as submitted while it waits, so it must not wait long.
QUICK_S = 0.005
# How many quick calls share one grant at most: the one running and those lined up behind it. Deep
# enough that a worker rarely waits for the scheduler, and that its calls travel, and their results
# are read, several at a time; shallow enough that when a function turns slow (a larger input), few
# of its calls are stuck on one worker behind a slow one while another worker idles. 8 deep made
# the 10,000-task DAG about a tenth quicker than 4, but a slow tail a third slower (docs/benchmarks.md).
LINE_DEPTH = 4
_REMEMBERED = 4096   # code keys whose durations are kept; more means code edited away, and all are forgotten


class Lining:
    """Which calls go behind which, from how long each function's calls have run lately."""

    def __init__(self, backend: LiningBackend) -> None:
        self.backend = backend
        self._durations: dict[str, float] = {}   # code key -> how long its calls run, lately

    def quick(self, code_key: str) -> bool:
        return self._durations.get(code_key, QUICK_S) < QUICK_S

    def learn(self, call: TaskCall, outcome: TaskOutcome) -> None:
        """Take how long ``call`` ran into its function's recent duration."""
        if outcome.started_at is None or outcome.finished_at is None:
            return
        if len(self._durations) > _REMEMBERED:
            self._durations.clear()
        took, before = outcome.finished_at - outcome.started_at, self._durations.get(call.code.key)
        # A moving average: one slow call (a worker's first, which loads the code) does not
        # decide alone, and a function that turns slow stops being lined up within a few calls.
        self._durations[call.code.key] = took if before is None else 0.7 * before + 0.3 * took

    def lines_up(self, slot: Slot) -> bool:
        """Whether the slot holds quick calls, so that more may go behind them."""
        return bool(slot.line) and self.quick(slot.line[0].code.key)

    def behind(self, slot: Slot, queue: deque[tuple[Work, str]]) -> Iterator[tuple[Work, str]]:
        """Take from ``queue``, in order, the waiting tasks to line up behind the slot's last call.

        Quick ones only, and while the slot's line has room: the caller lines each
        up before asking for the next. Entries of cancelled runs or settled tasks
        met on the way are dropped.
        """
        while queue and len(slot.line) < LINE_DEPTH:
            work, tid = queue[0]
            if work.run.cancelling or work.run.states[tid].terminal:
                queue.popleft()
                continue
            code = work.snapshot.code[tid]
            if isinstance(code, TaskError) or not self.quick(code.key):
                return
            yield queue.popleft()

    def dependent(self, work: Work, tid: str) -> str | None:
        """The dependent of quick task ``tid`` to line up behind its call, if one may go.

        It must wait for ``tid`` alone, be quick and pending, need the same
        resources, and be neither cached nor reusable; ``tid``'s call must be the
        last of its line, with room behind it, and ``tid`` must not retry (its
        dependent would be bound to a failed attempt's outputs).
        """
        run, call, slot = work.run, work.calls[tid], work.grants[tid]
        task = run.plan.tasks[tid]
        if (slot.line[-1] is not call or len(slot.line) >= LINE_DEPTH or run.cancelling or task.spec.options.retries
                or not self.quick(call.code.key)):
            return None
        for child in work.below[tid]:
            t = run.plan.tasks[child]
            code = work.snapshot.code[child]
            if (run.states[child] is TaskState.PENDING and child not in work.calls and len(t.upstream) == 1
                    and not t.spec.options.cache and child not in work.reusable
                    and t.spec.resources == task.spec.resources
                    and not isinstance(code, TaskError) and self.quick(code.key)):
                return child
        return None
