"""A frozen snapshot of a workflow: what a run executes and what graph views draw.

A run takes a :class:`Plan` when it starts, so later edits to the workflow
never change a run already going. Graph views (text, Mermaid, DOT) are pure
functions of a plan as well.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from .task import TaskFunction, TaskSpec


@dataclass(frozen=True, slots=True)
class OutputRef:
    """Input wiring: the value comes from ``task_id``'s output ``key``."""

    task_id: str
    key: str


@dataclass(frozen=True, slots=True)
class PlannedTask:
    task_id: str
    spec: TaskSpec                            # with add_task's overrides applied
    function: TaskFunction                    # what workers call (pickled by name when importable)
    constants: Mapping[str, Any]              # inputs given as plain values
    refs: Mapping[str, OutputRef]             # inputs wired to another task's output
    upstream: tuple[str, ...]                 # every task this one waits for, data or ordering

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    keys: tuple[str, ...]  # "output->input" labels; empty for an ordering-only edge


@dataclass(frozen=True, slots=True)
class Plan:
    workflow_id: str
    name: str
    tasks: Mapping[str, PlannedTask]          # in insertion order
    edges: tuple[Edge, ...]
    # What readers derived from this plan (its grouping, its picture: see PerPlan); it lives and
    # dies with the plan, so a cache never keeps an edited workflow's old plan and inputs alive.
    derived: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        workflow_id: str,
        name: str,
        tasks: list[PlannedTask],
        ordering: set[tuple[str, str]],
    ) -> Plan:
        edges: dict[tuple[str, str], list[str]] = {}
        for t in tasks:
            for key, ref in t.refs.items():
                edges.setdefault((ref.task_id, t.task_id), []).append(f"{ref.key}->{key}")
        for pair in sorted(ordering):
            edges.setdefault(pair, [])
        return cls(
            workflow_id=workflow_id,
            name=name,
            tasks=MappingProxyType({t.task_id: t for t in tasks}),
            edges=tuple(Edge(s, d, tuple(k)) for (s, d), k in edges.items()),
        )

    def downstream(self) -> dict[str, list[str]]:
        """Task id -> the ids of the tasks that wait for it."""
        out: dict[str, list[str]] = {tid: [] for tid in self.tasks}
        for t in self.tasks.values():
            for up in t.upstream:
                out[up].append(t.task_id)
        return out

    def descendants(self, task_id: str) -> list[str]:
        """Every task that (transitively) waits for ``task_id``, in insertion order."""
        below = self.downstream()
        seen: set[str] = set()
        stack = [task_id]
        while stack:
            for child in below[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return [tid for tid in self.tasks if tid in seen]


T = TypeVar("T")


class PerPlan(Generic[T]):
    """One kind of thing derived from plans, made once per plan and kept on it.

    A workflow hands out the same plan until it is edited, so the runs of an
    unchanged workflow share what is derived from their plan (its grouping,
    its picture). It is kept in the plan's ``derived`` map, so it goes when the
    plan goes. Thread-safe: widgets derive in their own threads, and two of
    them asking at once make it once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def find(self, plan: Plan, variant: object = None) -> T | None:
        """What was made from ``plan``, if it was made already; else None."""
        found: T | None = plan.derived.get((self, variant))
        return found

    def get(self, plan: Plan, make: Callable[[], T], variant: object = None) -> T:
        found = self.find(plan, variant)
        if found is not None:
            return found
        with self._lock:
            found = self.find(plan, variant)
            if found is None:
                found = plan.derived[(self, variant)] = make()
        return found
