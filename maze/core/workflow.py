"""Building workflows: ``MaWorkflow``, ``MaTask`` and ``TaskOutput``.

A workflow is a mutable DAG of tasks. Every edit is checked when it is made,
and a bad one raises without changing the graph. ``run()`` freezes the graph
into a :class:`~maze.core.plan.Plan` and hands it to the client's engine; the
run-facing methods (``get_results``, ``wait`` ...) read the resulting
:class:`~maze.core.run.RunState`.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Any, TextIO

from . import graphviews, progress, report, waiting
from .errors import CycleError, RendererError, UnknownOutputError, UnknownRunError, WorkflowError
from .messages import MessageLog
from .plan import OutputRef, Plan, PlannedTask
from .protocol import Viewer
from .run import RunState
from .scheduler import Engine
from .task import TaskFunction


def show_progress(run: RunState, viewer: Viewer | None, out: TextIO, verbose: bool | None) -> dict[str, Any]:
    """``show_results``, for a workflow's run or a client's; the summary line at the end in every case.

    Where a notebook shows the live DAG, only that line (the widget shows the rest). Elsewhere, a
    run of at most ``progress.EVENT_LINES_UP_TO`` (20) tasks gets a line per event; a larger one a
    single progress line (counts by state, done/total, elapsed, ETA), redrawn in place on a TTY at
    most 5 times a second and printed at most every 5 s to a file or pipe, with task output and the
    first failures still printed as lines. ``verbose=True``: a line per event, always;
    ``verbose=False``: never (the progress line, or only the summary under the widget).
    """
    out = report.encodable(out)
    shown = viewer.watch(run) if viewer is not None else None
    style = progress.choose_style(len(run.plan.tasks), verbose=verbose, shown=shown is not None)
    summary = print_progress(run, out, style=style)
    if shown is not None:
        shown()   # the final picture, from this thread, before the cell ends
    return summary


def print_progress(run: RunState, out: TextIO, *, style: progress.Style = "events") -> dict[str, Any]:
    """Follow the run to its end, printing to ``out`` in ``style`` (:mod:`maze.core.progress`: a line per event,
    one self-updating progress line, or nothing), then the outcome line; return the summary."""
    progress.follow(run, out, style)
    summary = run.summary()
    states = Counter(state.value for state in run.states.values())
    print(report.summary_line(summary, states), file=out, flush=True)
    return summary


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """A reference to one output of one task; pass it as another task's input."""

    workflow_id: str
    task_id: str
    key: str

    def __repr__(self) -> str:
        return f"TaskOutput({self.task_id!r}, {self.key!r})"


class TaskOutputs(Mapping[str, TaskOutput]):
    """``task.outputs``: the declared outputs of a task, by name."""

    def __init__(self, workflow_id: str, task_id: str, keys: tuple[str, ...]) -> None:
        self._refs = {k: TaskOutput(workflow_id, task_id, k) for k in keys}
        self._task_id = task_id

    @property
    def task_id(self) -> str:
        """The id of the task these outputs belong to."""
        return self._task_id

    def __getitem__(self, key: str) -> TaskOutput:
        try:
            return self._refs[key]
        except KeyError:
            raise UnknownOutputError(
                f"task {self._task_id!r} has no output {key!r}; its declared outputs are {list(self._refs)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"TaskOutputs({self._task_id!r}, {list(self._refs)})"


def _holds_output(value: Any, depth: int = 3) -> bool:
    """Whether a container (list, tuple, set, dict) has a task output inside it, a few levels down."""
    if depth == 0:
        return False
    if isinstance(value, dict):
        items: Iterable[Any] = [*islice(value.keys(), 1000), *islice(value.values(), 1000)]
    elif isinstance(value, (list, tuple, set, frozenset)):
        # The first items only: a long list of numbers must not make add_task slow.
        items = islice(value, 1000)
    else:
        return False
    return any(isinstance(v, (TaskOutput, TaskOutputs, MaTask)) or _holds_output(v, depth - 1) for v in items)


class MaTask:
    """A task placed in a workflow. Read-only; returned by ``add_task``."""

    def __init__(self, planned: PlannedTask, workflow_id: str) -> None:
        self._planned = planned
        self.task_id = planned.task_id
        self.name = planned.name
        self.workflow_id = workflow_id
        self.outputs = TaskOutputs(workflow_id, planned.task_id, planned.spec.outputs)

    @property
    def inputs(self) -> Mapping[str, Any]:
        """The task's inputs, read-only (constants as given, wired inputs as :class:`TaskOutput` references)."""
        p = self._planned
        return MappingProxyType({**p.constants, **{k: TaskOutput(self.workflow_id, r.task_id, r.key) for k, r in p.refs.items()}})

    @property
    def resources(self) -> dict[str, float]:
        """The resources the task asks for, as ``{"cpu", "cpu_mem", "gpu", "gpu_mem"}``."""
        return self._planned.spec.resources.as_dict()

    def __repr__(self) -> str:
        return f"<MaTask {self.task_id!r}>"


class MaWorkflow:
    """A DAG of tasks that can be run any number of times."""

    def __init__(self, engine: Engine, name: str | None = None, *, viewer: Viewer | None = None) -> None:
        self._name = name or "workflow"
        self.workflow_id = f"{self._name}-{uuid.uuid4().hex[:8]}"
        self._engine = engine
        self._viewer = viewer
        self._tasks: dict[str, PlannedTask] = {}
        self._handles: dict[str, MaTask] = {}
        self._ordering: set[tuple[str, str]] = set()    # add_edge edges (data edges live in refs)
        self._ordering_into: dict[str, set[str]] = {}    # the same, by target
        self._downstream: dict[str, list[str]] = {}      # task -> the tasks that wait for it (any edge)
        self._stale: set[str] = set()                    # tasks whose ordering edges changed since plan()
        self._plan: Plan | None = None                   # the last plan, while the workflow is unchanged
        self._runs: dict[str, RunState] = {}
        self._name_counts: dict[str, int] = {}   # where the search for a free id resumes

    @property
    def name(self) -> str:
        """The workflow's name, shown in pictures and the run history (it may be changed)."""
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._name = name
        self._plan = None   # the next run and picture carry the new name

    # -- building -------------------------------------------------------------------

    def add_task(
        self,
        task_func: TaskFunction,
        inputs: Mapping[str, Any] | None = None,
        task_name: str | None = None,
        resources: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> MaTask:
        """Add a ``@task`` function; inputs that are ``TaskOutput``\\ s add the edges."""
        if not isinstance(task_func, TaskFunction):
            what = getattr(task_func, "__name__", repr(task_func))
            raise WorkflowError(
                f"add_task: {what!r} is not a @task function; decorate it with "
                "@task(inputs=[...], outputs=[...])"
            )
        if task_name is not None and (not isinstance(task_name, str) or not task_name):
            raise WorkflowError(f"add_task: task_name={task_name!r} is not accepted; expected a non-empty string")
        name = task_name or task_func.spec.name
        task_id = self._free_id(name)
        owner = f"task {task_id!r}"
        spec = task_func.spec.with_overrides(resources, options, owner=owner)
        if task_name:
            spec = dataclasses.replace(spec, name=task_name)
        constants, refs = self._wire_inputs(owner, spec.inputs, inputs)
        upstream = tuple(dict.fromkeys(r.task_id for r in refs.values()))
        planned = PlannedTask(task_id, spec, task_func, MappingProxyType(constants), MappingProxyType(refs), upstream)
        self._tasks[task_id] = planned
        self._plan = None
        self._downstream[task_id] = []
        for up in upstream:
            self._downstream[up].append(task_id)
        handle = MaTask(planned, self.workflow_id)
        self._handles[task_id] = handle
        return handle

    def _free_id(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``... : the first id not taken yet."""
        n = self._name_counts.get(name, 1)
        while (task_id := name if n == 1 else f"{name}-{n}") in self._tasks:
            n += 1
        self._name_counts[name] = n
        return task_id

    def _wire_inputs(
        self, owner: str, declared: tuple[str, ...], inputs: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, OutputRef]]:
        inputs = {} if inputs is None else inputs
        if not isinstance(inputs, Mapping):
            raise WorkflowError(f"{owner}: inputs must be a dict of input name -> value, got {type(inputs).__name__}")
        undeclared = [k for k in inputs if k not in declared]
        if undeclared:
            raise WorkflowError(
                f"{owner}: input {undeclared[0]!r} is not declared; the task declares inputs {list(declared)}"
            )
        missing = [k for k in declared if k not in inputs]
        if missing:
            raise WorkflowError(f"{owner}: missing input(s) {missing}; the task declares inputs {list(declared)}")
        constants: dict[str, Any] = {}
        refs: dict[str, OutputRef] = {}
        for key in declared:
            value = inputs[key]
            if isinstance(value, MaTask):
                raise WorkflowError(
                    f"{owner}: input {key!r} is the task {value.task_id!r} itself; pass one of its "
                    f"outputs instead, e.g. {value.task_id}.outputs[{next(iter(value.outputs), 'key')!r}]"
                )
            if isinstance(value, TaskOutputs):
                picks = ", ".join(f"{value.task_id}.outputs[{k!r}]" for k in value)
                raise WorkflowError(
                    f"{owner}: input {key!r} is all the outputs of task {value.task_id!r} at once; "
                    f"wire one of them: {picks or '(it declares no outputs)'}"
                )
            if _holds_output(value):
                raise WorkflowError(
                    f"{owner}: input {key!r} is a {type(value).__name__} holding task outputs; a task "
                    "output is wired as an input's whole value: give each output its own input"
                )
            if isinstance(value, TaskOutput):
                if value.workflow_id != self.workflow_id or value.task_id not in self._tasks:
                    raise WorkflowError(
                        f"{owner}: input {key!r} refers to output {value.key!r} of task {value.task_id!r} "
                        f"of another workflow ({value.workflow_id!r}); only outputs of tasks in "
                        f"{self.workflow_id!r} can be wired"
                    )
                refs[key] = OutputRef(value.task_id, value.key)
            else:
                constants[key] = value
        return constants, refs

    def _task_id_of(self, task: MaTask | str, role: str) -> str:
        task_id = task.task_id if isinstance(task, MaTask) else task
        if not isinstance(task_id, str) or task_id not in self._tasks:
            raise WorkflowError(
                f"{role}: {task!r} is not a task of workflow {self.workflow_id!r}; "
                f"its tasks are {list(self._tasks)}"
            )
        return task_id

    def add_edge(self, source: MaTask | str, target: MaTask | str) -> None:
        """Make ``target`` wait for ``source`` without passing data."""
        a = self._task_id_of(source, "add_edge source")
        b = self._task_id_of(target, "add_edge target")
        path = self._path(b, a)
        if path is not None:
            # The edge a -> b closes a cycle when a is reachable from b: name it in
            # the order work would flow around it, from b.
            cycle = [*path, b]
            raise CycleError(
                f"add_edge({a!r}, {b!r}) would close a cycle: {' -> '.join(cycle)}; the workflow is unchanged",
                cycle,
            )
        if (a, b) not in self._ordering:
            self._ordering.add((a, b))
            self._plan = None
            self._ordering_into.setdefault(b, set()).add(a)
            self._downstream[a].append(b)
            self._stale.add(b)

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A path ``start -> ... -> goal`` along the edges, or ``None``: a search from ``start`` only,
        so adding a thousand edges to a sink stays fast."""
        parent: dict[str, str | None] = {start: None}
        frontier = [start]
        while frontier:
            node = frontier.pop()
            if node == goal:
                path = [node]
                while (up := parent[path[-1]]) is not None:
                    path.append(up)
                return path[::-1]
            for child in self._downstream[node]:
                if child not in parent:
                    parent[child] = node
                    frontier.append(child)
        return None

    def del_edge(self, source: MaTask | str, target: MaTask | str) -> None:
        """Remove an ordering edge made with ``add_edge``."""
        a = self._task_id_of(source, "del_edge source")
        b = self._task_id_of(target, "del_edge target")
        if (a, b) in self._ordering:
            self._ordering.discard((a, b))
            self._plan = None
            self._ordering_into[b].discard(a)
            self._downstream[a].remove(b)
            self._stale.add(b)
            return
        data = [k for k, r in self._tasks[b].refs.items() if r.task_id == a]
        if data:
            raise WorkflowError(
                f"del_edge({a!r}, {b!r}): {b!r} reads {a!r}'s output through its input(s) {data}; "
                "a data edge goes away only with the input that makes it"
            )
        raise WorkflowError(f"del_edge({a!r}, {b!r}): there is no edge from {a!r} to {b!r}")

    def _refresh_upstream(self, task_id: str) -> None:
        """Bring a task's ``upstream`` up to date with its ordering edges (done when a plan is taken:
        per edge, it would make wiring a thousand tasks to one sink quadratic)."""
        t = self._tasks[task_id]
        data = [r.task_id for r in t.refs.values()]
        ordering = sorted(self._ordering_into.get(task_id, ()))
        upstream = tuple(dict.fromkeys(data + ordering))
        self._tasks[task_id] = dataclasses.replace(t, upstream=upstream)

    def get_tasks(self) -> list[dict[str, str]]:
        """The tasks, in the order they were added: ``[{"id", "name"}]``."""
        return [{"id": tid, "name": t.name} for tid, t in self._tasks.items()]

    def plan(self) -> Plan:
        """A frozen snapshot of the workflow as it is now (the same object until the next edit)."""
        if self._plan is None:
            for task_id in self._stale:
                self._refresh_upstream(task_id)
            self._stale.clear()
            self._plan = Plan.build(self.workflow_id, self._name, list(self._tasks.values()), set(self._ordering))
        return self._plan

    # -- running --------------------------------------------------------------------

    def run(self, *, fail_fast: bool = False, resume_from: str | None = None) -> str:
        """Start a run in the background and return its id at once.

        Args:
            fail_fast: stop the whole run at the first failed task.
            resume_from: a run id (of this workflow, or in the run history): tasks
                that finished there with the same code and inputs are not run
                again; :meth:`explain` says, per task, why it ran or was reused.

        Raises before starting anything when a task could never fit the capacity.
        """
        previous = None
        if resume_from is not None:
            previous = self._runs.get(resume_from) or self._engine.find_run(resume_from)
            if previous is None:
                raise UnknownRunError(
                    f"run(resume_from={resume_from!r}): no such run in workflow {self.workflow_id!r} "
                    "or in the run history"
                )
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        self._runs[run_id] = self._engine.start(self.plan(), run_id, fail_fast=fail_fast, resume_from=previous)
        return run_id

    def explain(self, run_id: str) -> dict[str, str]:
        """For each task of a run: why it ran, or where its result was reused from."""
        run = self._run(run_id)
        run.prepared.wait()  # reasons are decided in the background, right after run()
        return {tid: run.reasons.get(tid, "ran") for tid in run.plan.tasks}

    def _run(self, run_id: str) -> RunState:
        try:
            return self._runs[run_id]
        except (KeyError, TypeError):
            known = ", ".join(self._runs) or "none"
            raise UnknownRunError(
                f"workflow {self.workflow_id!r} has no run {run_id!r} (cleared, or never started); "
                f"its runs are: {known}"
            ) from None

    def get_results(self, run_id: str, verbose: bool = False) -> MessageLog:
        """The run's messages: live while it runs, recorded afterwards.

        With ``verbose=True``, prints each message as it arrives and returns
        once the run has ended. (Ctrl-C while waiting on the run, here or in
        the calls below, cancels it: see :meth:`RunState.interrupted`.)
        """
        run = self._run(run_id)
        log = run.log()
        if verbose:
            with run.reading():
                for message in log:
                    print(message, flush=True)
        return log

    def show_results(self, run_id: str, *, file: TextIO | None = None, verbose: bool | None = None) -> dict[str, Any]:
        """Show the run's progress as it happens; return the summary dict.

        In a notebook the live DAG shows the progress (its log pane holds what
        tasks print), and the cell gets one summary line at the end. Elsewhere
        a small run prints a line per event and a large one a self-updating
        progress line (the rule: :func:`maze.core.workflow.show_progress`);
        ``verbose=True`` prints every event, ``verbose=False`` never does.
        """
        return show_progress(self._run(run_id), self._viewer, file or sys.stdout, verbose)

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run ends (printing what its tasks print); return the summary dict."""
        run = self._run(run_id)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"wait: timeout={timeout!r} is not accepted; expected seconds, 0 or more, or None")
        if timeout is None:
            with run.reading():
                for message in run.follow_logs():
                    report.echo_log(message)
        else:
            with run.reading():
                ended = waiting.wait(run.ended.wait, timeout)
            if not ended:
                raise TimeoutError(f"run {run_id!r} did not end within {timeout} s")
        return run.summary()

    def get_task_result(self, run_id: str, task_id: str) -> dict[str, Any]:
        """``{"task_id", "result", "status"}`` (+ ``"error"``); waits for the task if needed."""
        run = self._run(run_id)
        tid = run.resolve_task(task_id)
        with run.reading():
            run.wait_task(tid)
        return run.task_result(tid)

    def cancel(self, run_id: str) -> None:
        """Stop the run: nothing new starts, running tasks are stopped."""
        self._engine.cancel(self._run(run_id))

    def list_cached_runs(self) -> list[str]:
        """The ids of this workflow's runs whose messages this workflow still holds (see ``clear_cache``)."""
        return list(self._runs)

    def clear_cache(self, run_id: str | None = None) -> None:
        """Forget one run's record (or all). An unknown id is ignored. Runs still going keep going."""
        if run_id is None:
            self._runs.clear()
        else:
            self._runs.pop(run_id, None)

    def run_state(self, run_id: str) -> RunState:
        """The run's state object, for read-only views such as the notebook widget."""
        return self._run(run_id)

    # -- views ----------------------------------------------------------------------

    def get_graph_ascii(self) -> str:
        """The DAG as indented text, one line per task."""
        return graphviews.to_text(self.plan())

    def print_graph(self) -> None:
        """Print :meth:`get_graph_ascii`."""
        print(self.get_graph_ascii())

    def get_graph_mermaid(self) -> str:
        """The DAG in Mermaid's ``flowchart`` syntax (renders on GitHub and in many Markdown viewers)."""
        return graphviews.to_mermaid(self.plan())

    def get_graph_info(self) -> dict[str, Any]:
        """The DAG as plain data: its nodes (id, name, inputs, outputs, resources) and edges."""
        return graphviews.graph_info(self.plan())

    def get_graph_dot(self) -> str:
        """The DAG in Graphviz's DOT language."""
        return graphviews.to_dot(self.plan())

    def show_graph(self, run_id: str | None = None) -> Any:
        """The DAG as a notebook widget, live-coloured by a run's task states when given.

        A run is drawn as it was run (the workflow may have been edited since).
        """
        if self._viewer is None:
            raise RuntimeError("this workflow has no viewer; create it with MaClient().create_workflow()")
        if run_id is None:
            return self._viewer.graph(self.plan())
        run = self._run(run_id)
        return self._viewer.graph(run.plan, run)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Rich display: the DAG as SVG where Graphviz is installed, and as text."""
        data: dict[str, Any] = {"text/plain": self.get_graph_ascii()}
        try:
            data["image/svg+xml"] = graphviews.render(self.get_graph_dot(), "svg").decode()
        except RendererError:
            pass
        return data

    def draw_graph(self, output_path: str = "workflow.png", method: str = "auto", dpi: int = 150) -> str:
        """Render the DAG with Graphviz to ``output_path`` (svg, png or pdf, by its suffix)."""
        return graphviews.draw(self.plan(), output_path, method=method, dpi=dpi)

    def __repr__(self) -> str:
        return f"<MaWorkflow {self.workflow_id!r}: {len(self._tasks)} tasks, {len(self.plan().edges)} edges>"
