"""Grouping a large DAG into a readable one: "work × 1,000" instead of 1,000 boxes.

Real workflows are mostly made of repeated shapes: one source fanned out to a
thousand tasks of one function, a sweep of a few functions repeated per
parameter. Drawn task by task, such a graph is a line a hundred thousand
points wide. So a large plan is drawn by *groups*: tasks that run the same
function and are wired the same way, to the same groups, up and down.

How groups are decided (a partition refinement, as in DFA minimisation):

1. start with one class per task name (the function, or ``task_name=``);
2. split every class by the set of classes its tasks read from and the set
   of classes that read from them;
3. repeat 2 until no class splits.

A fan-out ``src -> work × 1000 -> sink`` gives three groups; a 200-wide,
50-deep grid of one function gives one group per layer. Tasks whose shape
is unique stay single. Small plans (:data:`GROUP_ABOVE` tasks or fewer) are
not grouped: every task is worth its own box there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .plan import Plan

#: Plans with more tasks than this are drawn by groups.
GROUP_ABOVE = 40


@dataclass(frozen=True, slots=True)
class Group:
    """Tasks drawn as one node. A group of one is drawn as its task."""

    group_id: str                 # "g0", "g1", ...: safe in DOT and as a DOM id
    name: str                     # the tasks' name
    task_ids: tuple[str, ...]     # in the plan's order

    @property
    def label(self) -> str:
        return self.task_ids[0] if len(self.task_ids) == 1 else f"{self.name} × {len(self.task_ids):,}"


@dataclass(frozen=True, slots=True)
class Grouping:
    groups: tuple[Group, ...]                      # in the order of their first task
    of_task: Mapping[str, str]                     # task id -> group id
    edges: tuple[tuple[str, str, bool], ...]       # (source group, target group, carries data)

    @property
    def grouped(self) -> bool:
        """Whether any group holds more than one task."""
        return len(self.groups) < len(self.of_task)


def group_plan(plan: Plan, *, above: int = GROUP_ABOVE) -> Grouping:
    """The plan's tasks in groups (each task alone when the plan has ``above`` tasks or fewer)."""
    up = {tid: t.upstream for tid, t in plan.tasks.items()}
    down: dict[str, list[str]] = {tid: [] for tid in plan.tasks}
    for tid, ups in up.items():
        for u in ups:
            down[u].append(tid)
    if len(plan.tasks) <= above:
        label = {tid: i for i, tid in enumerate(plan.tasks)}
    else:
        label = _refine(plan, up, down)
    members: dict[int, list[str]] = {}
    for tid in plan.tasks:
        members.setdefault(label[tid], []).append(tid)
    groups = tuple(Group(f"g{i}", plan.tasks[tids[0]].name, tuple(tids)) for i, tids in enumerate(members.values()))
    of_task = {tid: g.group_id for g in groups for tid in g.task_ids}
    data_pairs = {(of_task[e.source], of_task[e.target]) for e in plan.edges if e.keys}
    pairs = dict.fromkeys((of_task[e.source], of_task[e.target]) for e in plan.edges)
    edges = tuple((a, b, (a, b) in data_pairs) for a, b in pairs)
    return Grouping(groups, of_task, edges)


def _refine(plan: Plan, up: Mapping[str, tuple[str, ...]], down: Mapping[str, list[str]]) -> dict[str, int]:
    names: dict[str, int] = {}
    label = {tid: names.setdefault(t.name, len(names)) for tid, t in plan.tasks.items()}
    count = len(names)
    while True:
        signatures: dict[tuple[int, frozenset[int], frozenset[int]], int] = {}
        new = {
            tid: signatures.setdefault(
                (label[tid], frozenset(label[u] for u in up[tid]), frozenset(label[d] for d in down[tid])),
                len(signatures),
            )
            for tid in plan.tasks
        }
        if len(signatures) == count:  # no class split: stable
            return new
        label, count = new, len(signatures)
