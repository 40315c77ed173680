"""What the scheduler keeps to drive one run, beside the run's own state.

A run's state (what readers see: task states, messages, results) is its
:class:`~maze.core.run.RunState`. What only the scheduler needs is a
:class:`Work` beside it: the run's ``graphlib`` sorter, the outputs of finished
tasks waiting for their dependents, the resources and the current call of each
admitted task, retry timers, and the bookkeeping of tasks submitted ahead of
their upstream tasks (see :mod:`maze.core.scheduler`). Only the scheduler and
its lining policy (:mod:`maze.core.lining`) read it.

What here depends on one run only (building a task's call, deciding what an
earlier run already did, which task may be submitted ahead) is a method of
:class:`Work`; what touches the resources or the backend shared by all runs
stays in the :class:`~maze.core.scheduler.Engine`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any

from .admission import Grant
from .history import Dropped, Stored
from .plan import PerPlan
from .protocol import Submitted, TaskCall, TaskError, TaskOutcome, TaskStarted, WorkerEvent
from .run import RunState, TaskState
from .shipping import ShippedCode
from .snapshot import Snapshot

_NO_CODE = ShippedCode("", b"")  # in calls whose function could not be pickled (never submitted)
_below: PerPlan[Mapping[str, list[str]]] = PerPlan()   # each plan's dependents, for every run of it


@dataclass(eq=False)
class Slot:
    """Resources granted once and held by one call, or by a short line of calls that run one after the other."""

    grant: Grant
    line: list[TaskCall] = field(default_factory=list)   # the calls holding it that have not ended, in order


@dataclass(eq=False)
class Work:
    """What the scheduler keeps to drive one run; the run's own state is ``run``."""

    run: RunState
    snapshot: Snapshot                           # code and constants as they were at run()
    sorter: TopologicalSorter[str]
    consumers: dict[str, int]                    # dependents that have not yet taken each task's outputs
    attempts: dict[str, int]
    handles: dict[str, Mapping[str, Any]] = field(default_factory=dict)   # outputs of finished tasks
    reusable: dict[str, tuple[Mapping[str, Any], str]] = field(default_factory=dict)  # task -> (result, source)
    calls: dict[str, TaskCall] = field(default_factory=dict)      # the current attempt of each admitted task
    grants: dict[str, Slot] = field(default_factory=dict)         # resources held by admitted tasks
    timers: dict[str, threading.Timer] = field(default_factory=dict)  # retries waiting for their delay
    # Submitting ahead (see the scheduler's docstring); empty unless the backend resolves submitted calls.
    eager: bool = False
    below: Mapping[str, list[str]] = field(default_factory=dict)  # task -> the tasks that wait for it (eager or lining)
    unsettled: dict[str, int] = field(default_factory=dict)       # upstream tasks neither submitted for good nor finished
    counted: set[str] = field(default_factory=set)                # tasks already taken off their dependents' unsettled
    solid: dict[str, Submitted] = field(default_factory=dict)     # submitted, not settled, will not retry: their handles
    ahead: set[str] = field(default_factory=set)                  # submitted before their upstream tasks finished
    held: dict[str, list[WorkerEvent]] = field(default_factory=dict)     # what ahead tasks reported, in order
    held_done: dict[str, tuple[TaskCall, TaskOutcome]] = field(default_factory=dict)  # outcomes of ahead tasks
    stopping: dict[str, tuple[str, str | None, bool]] = field(default_factory=dict)  # ahead tasks being stopped: (reason, upstream, cancelled)
    outcomes: deque[tuple[str, TaskCall, TaskOutcome]] = field(default_factory=deque)  # to conclude, in order
    draining: bool = False

    @classmethod
    def of(cls, run: RunState, snapshot: Snapshot, *, eager: bool = False, lining: bool = False) -> Work:
        plan = run.plan
        sorter: TopologicalSorter[str] = TopologicalSorter({tid: t.upstream for tid, t in plan.tasks.items()})
        sorter.prepare()   # the plan was checked for cycles already
        consumers = dict.fromkeys(plan.tasks, 0)
        for t in plan.tasks.values():
            for up in {ref.task_id for ref in t.refs.values()}:
                consumers[up] += 1
        work = cls(run, snapshot, sorter, consumers, dict.fromkeys(plan.tasks, 0), eager=eager)
        if eager or lining:
            work.below = _below.get(plan, plan.downstream)
        if eager:
            work.unsettled = {tid: len(set(t.upstream)) for tid, t in plan.tasks.items()}
        return work

    def plan_reuse(self, old: RunState) -> None:
        """Decide, per task, whether ``old``'s result stands for this run, and say why."""
        run = self.run
        for tid, fp in run.fingerprints.items():
            if tid not in old.plan.tasks:
                run.explain(tid, f"not in run {old.run_id}")
            elif old.states[tid] is not TaskState.FINISHED:
                run.explain(tid, f"it did not finish in run {old.run_id} ({old.states[tid].value})")
            elif tid not in old.fingerprints:
                run.explain(tid, f"run {old.run_id} recorded no fingerprint for it")
            elif (why := fp.why_different(old.fingerprints[tid])) is not None:
                run.explain(tid, why)
            elif any(isinstance(v, (Dropped, Stored)) for v in old.results[tid].values()):
                run.explain(tid, "its result was not kept in the history (too large, or not picklable)")
            else:
                self.reusable[tid] = (old.results[tid], f"run {old.run_id}")
                run.explain(tid, f"reused: unchanged since run {old.run_id}")

    def first_call(self, tid: str, grant: Grant) -> TaskCall:
        """The first attempt's call of ``tid``, taking its upstream outputs (and letting go of those
        no other dependent still needs)."""
        run = self.run
        t = run.plan.tasks[tid]
        code = self.snapshot.code[tid]
        if isinstance(code, TaskError):
            code = _NO_CODE
        # Constants as they were at run(); outputs of reused tasks are plain values
        # (no backend holds them), passed as constants too.
        constants = {key: frozen.value for key, frozen in self.snapshot.constants[tid].items()}
        inputs = {}
        for key, ref in t.refs.items():
            if run.is_reused(ref.task_id):
                constants[key] = run.results[ref.task_id][ref.key]
            else:
                inputs[key] = self.handles[ref.task_id][ref.key]
        fed = {ref.task_id for ref in t.refs.values()}
        for up in fed:
            if run.is_reused(up):
                continue
            self.consumers[up] -= 1
            if self.consumers[up] == 0:
                del self.handles[up]  # every dependent holds what it needs; free big outputs early
        # Upstream calls still going whose outputs this task does not take: it waits for their end.
        after = tuple(self.solid[up].done for up in t.upstream
                      if up in self.solid and up not in fed and run.states[up] is not TaskState.FINISHED
                      ) if self.solid else ()
        attempt = self.attempts[tid]
        return TaskCall(
            call_id=f"{run.run_id}:{tid}:{attempt}",
            run_id=run.run_id, task_id=tid, task_name=t.name, attempt=attempt,
            func=t.function, code=code, constants=constants, inputs=inputs, outputs=t.spec.outputs,
            resources=t.spec.resources, gpu_ids=grant.gpu_ids, timeout=t.spec.options.timeout, after=after,
        )

    def can_go_ahead(self, tid: str) -> bool:
        """Whether ``tid``, whose upstream tasks are all submitted for good or finished, may be submitted now."""
        run = self.run
        t = run.plan.tasks[tid]
        return (run.states[tid] is TaskState.PENDING and not run.cancelling and tid not in self.calls
                and not t.spec.options.cache and tid not in self.reusable
                # all finished: the sorter makes it ready, and it goes the usual way
                and any(up in self.solid for up in t.upstream))

    def apply(self, tid: str, call: TaskCall, event: WorkerEvent) -> None:
        """What a call reported, as a transition of the run."""
        if isinstance(event, TaskStarted):
            self.run.start(tid, event, call.attempt)
        else:
            self.run.output(tid, event)

    def settled(self, tid: str) -> None:
        """The task's current attempt is over for good (it is about to reach a terminal state)."""
        self.calls.pop(tid, None)
        self.solid.pop(tid, None)
