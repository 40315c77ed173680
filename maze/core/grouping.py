"""Grouping a large DAG into a readable one: "work × 1,000" instead of 1,000 boxes.

Real workflows are mostly made of repeated shapes: one source fanned out to a
thousand tasks of one function, a sweep of a few functions repeated per
parameter. Drawn task by task, such a graph is a line a hundred thousand
points wide. So a large plan is drawn by *groups*: tasks that run the same
function and are wired the same way, to the same groups, up and down.

How groups are decided: two tasks are in one group when they have the same
name (the function, or ``task_name=``) and the same *shape* both ways:

* upstream: the same set of upstream shapes, by edge kind (data or ordering
  only), computed in one pass in topological order;
* downstream: the same set of downstream shapes, computed in one pass in
  reverse order.

So the cost is linear in the size of the graph, however deep. A fan-out
``src -> work × 1000 -> sink`` gives three groups; a 200-wide, 50-deep grid of
one function gives one group per layer. Tasks whose shape
is unique stay single. Small plans (:data:`GROUP_ABOVE` tasks or fewer) are
not grouped: every task is worth its own box there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from graphlib import TopologicalSorter

from .plan import PerPlan, Plan

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


def group_plan(plan: Plan, *, above: int = GROUP_ABOVE) -> Grouping:
    """The plan's tasks in groups (each task alone when the plan has ``above`` tasks or fewer).

    A workflow hands out the same plan until it is edited, so the runs of an
    unchanged workflow (a widget each) share one grouping: the last few are kept.
    """
    return _recent.get(plan, lambda: _group(plan, above), above)


_recent: PerPlan[Grouping] = PerPlan()


def _group(plan: Plan, above: int) -> Grouping:
    if len(plan.tasks) <= above:
        label = {tid: i for i, tid in enumerate(plan.tasks)}
    else:
        label = _shapes(plan)
    members: dict[int, list[str]] = {}
    for tid in plan.tasks:
        members.setdefault(label[tid], []).append(tid)
    groups = tuple(Group(f"g{i}", plan.tasks[tids[0]].name, tuple(tids)) for i, tids in enumerate(members.values()))
    of_task = {tid: g.group_id for g in groups for tid in g.task_ids}
    data_pairs = {(of_task[e.source], of_task[e.target]) for e in plan.edges if e.keys}
    pairs = dict.fromkeys((of_task[e.source], of_task[e.target]) for e in plan.edges)
    edges = tuple((a, b, (a, b) in data_pairs) for a, b in pairs)
    return Grouping(groups, of_task, edges)


def _shapes(plan: Plan) -> dict[str, int]:
    """A class number per task: equal numbers, equal name and shape both ways (see the module docstring)."""
    up: dict[str, list[tuple[str, bool]]] = {tid: [] for tid in plan.tasks}
    down: dict[str, list[tuple[str, bool]]] = {tid: [] for tid in plan.tasks}
    for e in plan.edges:
        up[e.target].append((e.source, bool(e.keys)))
        down[e.source].append((e.target, bool(e.keys)))
    position = {tid: i for i, tid in enumerate(plan.tasks)}
    if all(position[e.source] < position[e.target] for e in plan.edges):
        order = list(plan.tasks)   # the usual case: tasks were added after what they wait for
    else:                          # an add_edge pointed back to an earlier task
        order = list(TopologicalSorter({tid: [s for s, _ in up[tid]] for tid in plan.tasks}).static_order())
    up_shape = _one_way(plan, order, up)
    down_shape = _one_way(plan, order[::-1], down)
    classes: dict[tuple[int, int], int] = {}
    return {tid: classes.setdefault((up_shape[tid], down_shape[tid]), len(classes)) for tid in plan.tasks}


def _one_way(plan: Plan, order: list[str], links: Mapping[str, list[tuple[str, bool]]]) -> dict[str, int]:
    """Number each task by its name and the set of (shape, edge kind) of the tasks it links to."""
    ids: dict[tuple[str, frozenset[tuple[int, bool]]], int] = {}
    shape: dict[str, int] = {}
    for tid in order:   # every linked task comes earlier in ``order``
        key = (plan.tasks[tid].name, frozenset((shape[other], data) for other, data in links[tid]))
        shape[tid] = ids.setdefault(key, len(ids))
    return shape
